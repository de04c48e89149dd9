"""Pretrain a Mixer: `deepspeed launch/pretrain.py --config configs/mixer_l16.yaml [--set k=v ...]`.

Also runs under `torchrun`, Slurm `srun` (one task per GPU) and plain `python` (one process).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `deepspeed launch/x.py` puts launch/ on sys.path

from pretrain.cluster.preemption import PreemptionFlag

PREEMPTION = PreemptionFlag()  # first thing: Slurm's SIGUSR1/SIGTERM during the imports and set-up are kept

from launch.cli import run_dir_for, run_main, run_parser  # noqa: E402  (imports torch)
from pretrain.telemetry.console import quiet_libraries  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = run_parser(__doc__.splitlines()[0]).parse_args(argv)
    from pretrain.config import PretrainConfig, load_config

    cfg = load_config(args.config, PretrainConfig, args.set)  # before the slow imports: a typo fails at once
    quiet_libraries(cfg.logging.verbose)  # before DeepSpeed is imported
    from pretrain.run import train

    result = train(cfg, run_dir_for(args.config, args.run_dir), resume=args.resume == "auto", preemption=PREEMPTION,
                   overwrite=args.overwrite)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(run_main(main))
