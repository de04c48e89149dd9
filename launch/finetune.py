"""Fine-tune a Mixer: `deepspeed launch/finetune.py --config configs/finetune/mixer_l16_in1k.yaml [--set k=v ...]`.

Writes metrics.json (top1, top5, loss, num_samples, per-class and few-shot results) in the run dir at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `deepspeed launch/x.py` puts launch/ on sys.path

from launch.cli import rank, run_dir_for, run_main, run_parser


def main(argv: list[str] | None = None) -> int:
    args = run_parser(__doc__.splitlines()[0]).parse_args(argv)
    from finetune.config import FinetuneConfig
    from pretrain.config import load_config

    cfg = load_config(args.config, FinetuneConfig, args.set)  # before the slow imports: a typo fails at once
    from finetune.trainer import finetune

    run_dir = run_dir_for(args.config, args.run_dir)
    result, metrics = finetune(cfg, run_dir, resume=args.resume == "auto")
    if metrics is not None and rank() == 0:
        summary = {k: metrics[k] for k in ("top1", "top5", "loss", "num_samples")}
        print(json.dumps(summary), flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(run_main(main))
