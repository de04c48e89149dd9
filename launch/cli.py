"""What every entry point shares: logging set up per rank, user errors as one line + exit 2, common options."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pretrain.cluster.distributed import add_launcher_arguments

USAGE_EXIT = 2


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean 'the user asked for something wrong', shown as one line."""
    from finetune.errors import FinetuneError
    from pretrain.cluster.errors import DistributedSetupError, RankFailedError
    from pretrain.components.checkpoint import CheckpointError
    from pretrain.components.run_dir import RunDirError
    from pretrain.config import ConfigError
    from pretrain.data import DataError
    from pretrain.evaluators.errors import EvalError
    from pretrain.models import WeightsError
    from pretrain.run import TrainingError

    return (ConfigError, DataError, WeightsError, CheckpointError, TrainingError, FinetuneError, EvalError,
            DistributedSetupError, RankFailedError, RunDirError)


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def setup_logging() -> None:
    from pretrain.telemetry.console import name_accelerator

    name_accelerator()
    logging.basicConfig(level=logging.INFO if rank() == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call `main`, turning a user error into `error: ...` on stderr and exit status 2."""
    setup_logging()
    try:
        return main(argv)
    except user_errors() as err:
        where = f"[rank {rank()}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{where}error: {err}", file=sys.stderr, flush=True)
        return USAGE_EXIT


def run_parser(description: str) -> argparse.ArgumentParser:
    """The options shared by the training entry points (`--local_rank` from the deepspeed launcher is accepted)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/mixer_l16.yaml")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. --set optim.lr=3e-3 train.zero_stage=3 (repeatable)")
    parser.add_argument("--run-dir", default=None, help="output folder (default: runs/<config name>)")
    parser.add_argument("--resume", choices=["auto", "never"], default="never",
                        help="auto: continue from the run dir's latest checkpoint when there is one; never (the "
                             "default) refuses a run dir that already holds a run")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a run dir that holds one, moving the old run into "
                             "RUN_DIR/replaced-<UTC time>/ (nothing is deleted)")
    add_launcher_arguments(parser)
    return parser


def run_dir_for(config: str, run_dir: str | None) -> Path:
    return Path(run_dir) if run_dir else Path("runs") / Path(config).stem


def summary_line(metrics: dict, weights: str, path: Path) -> str:
    """What an evaluation found, for people: `weights`' top-1/top-5 on how many samples, and where the rest is."""
    if "top1" not in metrics:
        return f"evaluated {weights}: {path}"
    return (f"{weights}: top-1 {metrics['top1']:.2%}, top-5 {metrics['top5']:.2%} on {metrics['num_samples']} "
            f"samples (all metrics: {path})")
