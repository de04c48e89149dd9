"""Fine-tune a Mixer: `deepspeed launch/finetune.py --config configs/finetune/mixer_l16_in1k.yaml [--set k=v ...]`.

Writes metrics.json in the run dir: every evaluation with its step, and at the top level the latest top1, top5,
loss, num_samples, per-class and few-shot results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `deepspeed launch/x.py` puts launch/ on sys.path

from pretrain.cluster.preemption import PreemptionFlag

PREEMPTION = PreemptionFlag()  # first thing: Slurm's SIGUSR1/SIGTERM during the imports and set-up are kept

from launch.cli import rank, run_dir_for, run_main, run_parser, summary_line  # noqa: E402  (imports torch)
from pretrain.telemetry.console import quiet_libraries  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = run_parser(__doc__.splitlines()[0]).parse_args(argv)
    from finetune.config import load_finetune_config

    cfg = load_finetune_config(args.config, args.set)  # before the slow imports: a typo fails at once
    quiet_libraries(cfg.logging.verbose)  # before DeepSpeed is imported
    from finetune.stage import FINETUNE
    from pretrain.components.checkpoint import FINAL
    from pretrain.run import METRICS, train

    run_dir = run_dir_for(args.config, args.run_dir)
    result = train(cfg, run_dir, resume=args.resume == "auto", stage=FINETUNE, preemption=PREEMPTION,
                   overwrite=args.overwrite)
    metrics = run_dir / METRICS
    if not result.preempted and rank() == 0 and metrics.is_file():
        weights = f"fine-tuned weights {run_dir / FINAL} at {cfg.model.img_size} px"
        print(summary_line(json.loads(metrics.read_text()), weights, metrics), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(run_main(main))
