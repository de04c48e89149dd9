"""launch/pretrain.py with a slow classification evaluator, for tests/test_preemption_evals.py.

Each evaluation batch (the stand-in forward of a rank without one too) prints ``[rank R] slow eval batch N at step S``
on stderr, then sleeps SLOW_EVAL_S seconds before its forward pass: a test signals the job once it is known to be in
the middle of an evaluation, and the evaluation would take many seconds more were it not abandoned.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, whatever the cwd

from launch import pretrain  # noqa: E402  (sets up the preemption flag first thing, as the entry point does)
from launch.cli import rank, run_main  # noqa: E402


def slow_down(delay: float) -> None:
    from pretrain.evaluators import classification

    real, batches = classification.logits_fp32, [0]

    def logits_fp32(model, x):
        batches[0] += 1
        print(f"[rank {rank()}] slow eval batch {batches[0]}", file=sys.stderr, flush=True)
        time.sleep(delay)
        return real(model, x)

    classification.logits_fp32 = logits_fp32


if __name__ == "__main__":
    slow_down(float(os.environ["SLOW_EVAL_S"]))
    sys.exit(run_main(pretrain.main))
