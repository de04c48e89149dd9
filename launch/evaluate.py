"""Evaluate a model: `python launch/evaluate.py --config CFG --checkpoint PATH [--data VAL_SHARDS] [--fewshot]`.

Build the model, load the weights, run the evaluators: the config's `data.val` evaluator (`eval`), the few-shot
one with `--fewshot` (or `fewshot.enabled`), and every entry of `evals`. Exact top-1/top-5/loss/per-class accuracy
(each validation sample counted once, also under deepspeed/torchrun/srun), optional ImageNet-ReaL; results in
`<run dir>/metrics.json`. The model is the config's `model.name`: a Mixer variant or any timm model; with
`train.zero_stage: 3` its parameters are partitioned over the ranks as in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `deepspeed launch/x.py` puts launch/ on sys.path

from launch.cli import rank, run_main
from pretrain.distributed import add_launcher_arguments


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the fine-tune YAML the model was trained with")
    parser.add_argument("--checkpoint", required=True,
                        help="a run dir (final.safetensors), .safetensors, official .npz or timm .pth")
    parser.add_argument("--data", default=None, help="validation shard folder (default: the config's data.val)")
    parser.add_argument("--fewshot", action="store_true", help="also run the few-shot linear evaluation")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides (repeatable)")
    parser.add_argument("--run-dir", default=None, help="where metrics.json goes (default: runs/<config>/eval)")
    add_launcher_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from finetune.config import FinetuneConfig
    from pretrain.config import load_config

    overrides = [*args.set, f"init.path={args.checkpoint}", "fewshot.weights=[trained]"]
    overrides += [f"data.val={args.data}"] if args.data else []
    overrides += ["fewshot.enabled=true"] if args.fewshot else []
    cfg = load_config(args.config, FinetuneConfig, overrides)

    from finetune.init import load_init
    from finetune.stage import default_evals
    from pretrain.data import device_preprocess
    from pretrain.distributed import detect_env, init_distributed, shutdown_distributed
    from pretrain.engine import DTYPES, evaluation_module
    from pretrain.evaluators.build import build_evaluators
    from pretrain.evaluators.runner import Evaluations
    from pretrain.monitor import Monitor
    from pretrain.run import METRICS, build_model

    env = detect_env()
    init_distributed(env)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem / "eval"
    specs = {**default_evals(cfg), **cfg.evals}
    evaluators = build_evaluators(specs, cfg, env, exact_classes=True)
    dtype = DTYPES[cfg.train.precision]
    model = build_model(cfg)
    load_init(model, args.checkpoint, drop_head=False)
    model = evaluation_module(cfg, env, model.to(env.device, dtype).eval())  # partitioned under ZeRO-3
    with Monitor(run_dir, env.rank, enabled=False, total_steps=1) as monitor:
        evaluations = Evaluations(evaluators, specs, total_steps=0, monitor=monitor, metrics_path=run_dir / METRICS,
                                  rank=env.rank)
        evaluations.run(evaluations.due(0), model, device_preprocess(cfg, dtype), step=0)
    if rank() == 0:
        summary = evaluations.summary()
        print(json.dumps({k: summary[k] for k in ("top1", "top5", "loss", "num_samples") if k in summary}),
              flush=True)
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
