"""launch/pretrain.py with a slow classification evaluator, for tests/test_preemption_evals.py.

Each evaluation batch (the stand-in forward of a rank without one too) prints ``[rank R] slow eval batch N`` on
stderr, then sleeps SLOW_EVAL_S seconds before its forward pass: a test signals the job once it is known to be in
the middle of an evaluation, and the evaluation would take many seconds more were it not abandoned.

With SIGNAL_AT_STEP=S the process sends itself SIGUSR1 inside training step S instead (the signal lands after the
update of S and before its evaluations); with SIGNAL_IN_SAVE=1, at the start of its first checkpoint save.
"""

import os
import signal
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


def signal_at(step: int) -> None:
    from pretrain.run import Run

    real = Run.step

    def run_step(self, timer):
        out = real(self, timer)
        if self.state.step == step:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    Run.step = run_step


def signal_in_save() -> None:
    from pretrain.components.checkpoint import Checkpointer

    real, sent = Checkpointer.save, []

    def save(self, step):
        if not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(self, step)

    Checkpointer.save = save


if __name__ == "__main__":
    slow_down(float(os.environ["SLOW_EVAL_S"]))
    if os.environ.get("SIGNAL_AT_STEP"):
        signal_at(int(os.environ["SIGNAL_AT_STEP"]))
    if os.environ.get("SIGNAL_IN_SAVE"):
        signal_in_save()
    sys.exit(run_main(pretrain.main))
