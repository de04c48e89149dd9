"""Evaluate a model: `python launch/evaluate.py --checkpoint RUN [--fewshot] [--set k=v ...]`.

Build the model, load the weights, run the evaluators: the config's `data.val` evaluator (`eval`), the few-shot
one with `--fewshot` (or `fewshot.enabled`), and every entry of `evals`. Exact top-1/top-5/loss/per-class accuracy
(each validation sample counted once, also under deepspeed/torchrun/srun), optional ImageNet-ReaL. The config is
the run's resolved `config.yaml` (its data, model, preprocessing), unless `--config` names another; `--set`
overrides either. Results go to `RUN/eval/metrics.json` (`--run-dir` elsewhere). The model is the config's
`model.name`, or the one the checkpoint holds: a Mixer variant or any timm model; with `train.zero_stage: 3` its
parameters are partitioned over the ranks as in training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `deepspeed launch/x.py` puts launch/ on sys.path

from launch.cli import rank, run_main, summary_line
from pretrain.cluster.distributed import add_launcher_arguments

EVAL_DIR = "eval"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True,
                        help="a run dir (final.safetensors), .safetensors, official .npz or timm .pth")
    parser.add_argument("--config", default=None,
                        help="YAML config (default: the checkpoint's run's resolved config.yaml)")
    parser.add_argument("--data", default=None, help="validation shard folder (default: the config's data.val)")
    parser.add_argument("--fewshot", action="store_true", help="also run the few-shot linear evaluation")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted config overrides (repeatable)")
    parser.add_argument("--run-dir", default=None,
                        help="where metrics.json goes (default: RUN/eval, or runs/<config>/eval for a bare file); "
                        "never a training run's dir")
    add_launcher_arguments(parser)
    return parser.parse_args(argv)


def config_and_output(checkpoint: str, config: str | None, run_dir: str | None) -> tuple[Path, Path]:
    """The config to evaluate with and the folder its metrics.json goes to (see the module's doc)."""
    from finetune.init_model import run_config
    from pretrain.config import ConfigError

    path = Path(checkpoint)
    if not path.exists():
        raise ConfigError(f"--checkpoint {checkpoint}: no such file or folder (a run dir, .safetensors, .npz or .pth)")
    resolved = run_config(path)
    if config is None and resolved is None:
        raise ConfigError(f"--checkpoint {checkpoint}: not a run dir with a config.yaml; give --config, the config "
                          "the weights were trained with")
    cfg_path = Path(config) if config else resolved
    if run_dir:
        out = Path(run_dir)
    elif resolved is not None:
        out = resolved.parent / EVAL_DIR
    else:
        out = Path("runs") / cfg_path.stem / EVAL_DIR
    return cfg_path, out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    config, run_dir = config_and_output(args.checkpoint, args.config, args.run_dir)

    from finetune.config import load_finetune_config
    from pretrain.config import ConfigError
    from pretrain.telemetry.console import quiet_deepspeed_logger, quiet_libraries, start_up_prints

    overrides = [*args.set, f"init.path={args.checkpoint}", "fewshot.weights=[trained]"]
    overrides += [f"data.val={args.data}"] if args.data else []
    overrides += ["fewshot.enabled=true"] if args.fewshot else []
    cfg = load_finetune_config(config, overrides)
    quiet_libraries(cfg.logging.verbose)  # before DeepSpeed is imported

    from finetune.init import load_init
    from finetune.stage import EVAL_KEYS, check_init, default_evals
    from pretrain.cluster.distributed import detect_env, init_distributed, shutdown_distributed
    from pretrain.components.engine import DTYPES, evaluation_module
    from pretrain.components.run_dir import METRICS, check_eval_dir
    from pretrain.config.preflight import evals_key, preflight
    from pretrain.data import device_preprocess
    from pretrain.evaluators.build import build_evaluators
    from pretrain.evaluators.runner import Evaluations
    from pretrain.run import build_model
    from pretrain.telemetry.monitor import Monitor

    specs = {**default_evals(cfg), **cfg.evals}
    if not specs:
        raise ConfigError(f"nothing to evaluate with {config}: no data.val and no evals; give --data VAL_SHARDS "
                          "(or --set data.val=...)")
    env = detect_env()
    check_eval_dir(run_dir)  # every rank, before any writes: never into a training run's dir
    preflight(cfg, specs, env.world_size, exact_classes=True, key_of=evals_key(cfg, EVAL_KEYS), train=False)
    check_init(cfg, drop_head=False)
    quiet_deepspeed_logger(cfg.logging.verbose)
    with start_up_prints(cfg.logging.verbose):
        init_distributed(env)
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
        print(summary_line(evaluations.summary(), f"{args.checkpoint} at {cfg.model.img_size} px",
                           run_dir / METRICS), flush=True)
    shutdown_distributed()
    return 0

if __name__ == "__main__":
    sys.exit(run_main(main))
