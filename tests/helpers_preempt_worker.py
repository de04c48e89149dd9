"""A training loop stand-in for the preemption test.

Prints ``step N`` after each step; step 3 prints ``inside step 3`` and blocks until a line arrives on stdin, so
the test signals the process once it is known to be in the middle of a step (a signal sent after ``step 2``
alone could land before step 2's check). Stops after the first step that ends with the request seen, "saves"
and exits with PREEMPTED_EXIT_CODE.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, whatever the cwd

from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag, any_rank_requested  # noqa: E402


def main() -> int:
    with PreemptionFlag() as flag:
        print("ready", flush=True)
        for step in range(1, 100):
            if step == 3:
                print("inside step 3", flush=True)  # past step 2's check: a signal from now on is step 3's
                sys.stdin.readline()  # a long step: the signal arrives while we wait here
            print(f"step {step}", flush=True)
            if any_rank_requested(flag):
                print(f"checkpoint saved at step {step}; signal {flag.received}", flush=True)
                return PREEMPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
