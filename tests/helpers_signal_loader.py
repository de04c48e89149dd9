"""A rank's main process stand-in for tests/test_signals.py: our real train loader, with DataLoader workers.

    python tests/helpers_signal_loader.py MANIFEST WORKERS MODE

Sets up the PreemptionFlag first thing, as the entry points do, takes one batch and prints
``ready <pid of each worker>``. Then, by MODE:

- ``stop``: keep taking batches; once a signal has set the flag, take 3 more (the workers must still be there),
  print ``stopped; signal N`` and exit with PREEMPTED_EXIT_CODE, as the training loop does.
- ``hold``: sleep until killed or interrupted (Ctrl-C: the KeyboardInterrupt shuts the loader down).
- ``exit``: exit at once with the loader's iterator still alive in a reference cycle, so that only the
  interpreter's exit can end the workers (multiprocessing terminates daemonic children with SIGTERM, then joins).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, whatever the cwd

from pretrain.cluster.preemption import PREEMPTED_EXIT_CODE, PreemptionFlag  # noqa: E402

PREEMPTION = PreemptionFlag()

import psutil  # noqa: E402

from pretrain.data import build_train_loader, load_manifest, train_transform  # noqa: E402


def main() -> int:
    manifest_path, workers, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    items = build_train_loader(load_manifest(manifest_path), micro_batch=2, accum=1, rank=0, world_size=1,
                               workers=workers, seed=0, transform=train_transform(16), shuffle_buffer=4)
    next(items)
    pids = sorted(child.pid for child in psutil.Process().children())
    print("ready " + " ".join(map(str, pids)), flush=True)
    if mode == "exit":
        keep = [items]
        keep.append(keep)
        return 0
    if mode == "hold":
        while True:
            time.sleep(0.05)
    while not PREEMPTION.requested:
        next(items)
    for _ in range(3):
        next(items)
    print(f"stopped; signal {PREEMPTION.received}", flush=True)
    return PREEMPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
