"""launch/pretrain.py with one failure injected on one rank, for tests/test_rank_failures.py.

FAULT_RANK is the rank that fails; FAULT says where: `eval` (its evaluation counts raise, as a validation image
missing from the ReaL table does on the rank that holds it) or `save` (its write of its ZeRO optimizer shard
fails with EIO inside DeepSpeed's save_checkpoint).
"""

import errno
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, whatever the cwd

from launch import pretrain  # noqa: E402  (sets up the preemption flag first thing, as the entry point does)
from launch.cli import run_main  # noqa: E402

EVAL_MESSAGE = "sample 'val/00042' is not in the ReaL table (injected)"


def inject(fault: str) -> None:
    if fault == "eval":
        from pretrain.evaluators.accuracy import EvalAccumulator

        def update(self, *args, **kwargs):
            raise ValueError(EVAL_MESSAGE)

        EvalAccumulator.update = update
    elif fault == "save":
        import torch

        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if "optim_states" in str(f):
                raise OSError(errno.EIO, "Input/output error (injected)", str(f))
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    else:
        raise SystemExit(f"FAULT={fault!r}: expected eval or save")


if __name__ == "__main__":
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID")) == os.environ["FAULT_RANK"]:
        inject(os.environ["FAULT"])
    sys.exit(run_main(pretrain.main))
