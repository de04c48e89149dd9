"""Cost of periodic evaluation against the training between two evaluations: measured at demo scale, projected for
Mixer-L/16 on ImageNet-1k.

(1) Measured, one process: `pretrain.run.Run` of configs/demo.yaml (mixer_demo at 32 px, global batch 64, bf16,
ZeRO 1) on digits shards with the demo's evaluators: `val` (classification on the val digits) and `fs` (few-shot
linear probes, train digits as the shots' pool, scored on the val digits). Rounds rotate the order of three timed
tasks: N training steps (`next(run.data)` + `run.engine.step`), one `val` evaluation, one `fs` evaluation, each
evaluator called as the run calls it (`evaluator(run.engine.module, run.preprocess)`); medians over the rounds. From
them: seconds per training step and per evaluation, and the share of wall time spent evaluating when both evaluators
run every K steps. The matmul peak is measured in the same run (`pretrain.telemetry.mfu.measure_peak_flops`).

(2) Projected from FLOPs, computed here (nothing hand-written): the model and batch of configs/mixer_l16.yaml (the
paper's Mixer-L/16 pretraining, 224 px, global batch 4096), `mixer_flops_per_image` for the forward; a training step
is 3 forwards per image, an evaluation 1 forward per image, at the same MFU on a stated device (default: 64 H100-SXM,
the config's 4096 / micro-batch 64, at 50 % MFU). Evaluators: classification on ImageNet-1k val (50,000 images) and
a 5-shot few-shot evaluator (25 per class x 1000 classes train features + the 50,000 val features); the few-shot
least-squares solve, host-side float64 work outside the FLOP model, is measured here at that size on random features.

    .venv/bin/python benchmarks/bench_eval.py                      # defaults: 5 rounds of 20 steps, every 100 steps
    .venv/bin/python benchmarks/bench_eval.py --assume-device H200 --assume-devices 128 --assume-mfu 0.4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pretrain.cluster.distributed import detect_env, init_distributed, shutdown_distributed  # noqa: E402
from pretrain.components.engine import DTYPES  # noqa: E402
from pretrain.config import PretrainConfig, load_config  # noqa: E402
from pretrain.config.errors import ConfigError  # noqa: E402
from pretrain.evaluators.fewshot_lsr import fewshot_accuracy  # noqa: E402
from pretrain.models import MlpMixer, create_model, is_mixer, mixer_flops_per_image  # noqa: E402
from pretrain.run import Run  # noqa: E402
from pretrain.telemetry.mfu import PEAK_FLOPS, TRAIN_FLOPS_PER_FORWARD, measure_peak_flops, peak_flops  # noqa: E402

WARMUP_STEPS = 2  # kernel selection, the train loader's start; each evaluator also runs once (its loader's workers)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_eval", description=__doc__.splitlines()[0])
    m = p.add_argument_group("measured (demo scale)")
    m.add_argument("--config", default="configs/demo.yaml")
    m.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    m.add_argument("--rounds", type=int, default=5)
    m.add_argument("--every", type=int, nargs="+", default=[100], help="evaluation cadences (steps) to report")
    m.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="few-shot shots (the demo's: 1 5)")
    m.add_argument("--train-data", default=None, help="digits train shards (default: built in a temporary folder)")
    m.add_argument("--val-data", default=None, help="digits val shards (default: built in a temporary folder)")
    m.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the measured config, as the entry points' --set (repeatable)")
    j = p.add_argument_group("projected (FLOPs)")
    j.add_argument("--project-config", default="configs/mixer_l16.yaml")
    j.add_argument("--project-every", type=int, nargs="+", default=[1000, 5000, 10000])
    j.add_argument("--project-val", type=int, default=50_000, help="validation images (ImageNet-1k val)")
    j.add_argument("--project-classes", type=int, default=1000)
    j.add_argument("--project-per-class", type=int, default=25, help="few-shot train images per class")
    j.add_argument("--project-shots", type=int, default=5)
    j.add_argument("--project-seeds", type=int, default=3, help="few-shot seeds (the evaluator's default: 3)")
    j.add_argument("--assume-device", default="H100-SXM", help=f"one of {', '.join(PEAK_FLOPS)}")
    j.add_argument("--assume-devices", type=int, default=0, help="default: global batch / micro-batch")
    j.add_argument("--assume-mfu", type=float, default=0.5, help="MFU of training and evaluation alike")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> str | None:
    """Why the arguments cannot work, or None."""
    counts = [args.steps, args.rounds, args.project_val, args.project_classes, args.project_per_class,
              args.project_shots, args.project_seeds, *args.every, *args.project_every, *args.shots]
    if min(counts) < 1:
        return "--steps, --rounds, --every, --shots and the --project-* counts must be positive"
    if args.assume_devices < 0:
        return "--assume-devices must be positive (or 0: global batch / micro-batch)"
    if args.assume_device not in PEAK_FLOPS:
        return f"unknown --assume-device {args.assume_device!r}; known: {', '.join(PEAK_FLOPS)}"
    if not 0 < args.assume_mfu <= 1:
        return f"--assume-mfu must be in (0, 1], got {args.assume_mfu}"
    if args.project_shots > args.project_per_class:
        return "--project-shots cannot exceed --project-per-class"
    return None


def digits(split: str, out: Path) -> str:
    subprocess.run([sys.executable, "-m", "data_prep", "build", "--layout", "digits", "--source", "digits",
                    "--split", split, "--out", str(out), "--shard-max-samples", "300"],
                   cwd=ROOT, check=True, capture_output=True)
    return str(out)


def demo_config(args: argparse.Namespace, train: str, val: str) -> PretrainConfig:
    """The demo config on one process with the demo's two evaluators (cadence: ours, below), then `--set`."""
    shots = "[" + ",".join(map(str, args.shots)) + "]"
    cfg = load_config(ROOT / args.config, PretrainConfig, [
        f"data.train={train}", "evals.val.type=classification", f"evals.val.data={val}",
        "evals.fs.type=fewshot", f"evals.fs.train={train}", f"evals.fs.val={val}", f"evals.fs.shots={shots}",
        *args.overrides])
    cfg.train.steps = max(cfg.train.steps, WARMUP_STEPS + args.rounds * args.steps)
    return cfg


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def measure(args: argparse.Namespace, run: Run) -> dict[str, list]:
    """Rounds of (N training steps, `val`, `fs`) in an order rotating by round: seconds, data wait, last results."""
    device, model, preprocess = run.env.device, run.engine.module, run.preprocess
    evaluators = run.evaluations.evaluators
    out: dict[str, list] = {"train": [], "wait": [], "val": [], "fs": [], "result_val": [], "result_fs": []}

    def train() -> None:
        wait = 0.0
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            t0 = time.perf_counter()
            item = next(run.data)
            wait += time.perf_counter() - t0
            run.engine.step(run.micro_batches(item))
        sync(device)
        seconds = time.perf_counter() - start
        out["train"].append(seconds / args.steps)
        out["wait"].append(wait / seconds)

    def evaluation(name: str) -> Callable[[], None]:
        def timed() -> None:
            sync(device)
            start = time.perf_counter()
            result = evaluators[name](model, preprocess)
            sync(device)
            out[name].append(time.perf_counter() - start)
            out[f"result_{name}"] = [result]
        return timed

    for _ in range(WARMUP_STEPS):
        run.engine.step(run.micro_batches(next(run.data)))
    for name in ("val", "fs"):
        evaluators[name](model, preprocess)
    tasks = [train, evaluation("val"), evaluation("fs")]
    for r in range(args.rounds):
        for task in tasks[r % 3:] + tasks[:r % 3]:
            task()
    return out


def share(eval_seconds: float, train_seconds: float) -> float:
    """The fraction of the wall time between two evaluations spent evaluating."""
    return eval_seconds / (eval_seconds + train_seconds)


def report_measured(args: argparse.Namespace, cfg: PretrainConfig, run: Run, out: dict[str, list],
                    load: tuple[float, float]) -> None:
    env, dtype = run.env, run.engine.dtype
    evaluators = run.evaluations.evaluators
    flops = run.flops_per_image
    measured = measure_peak_flops(env.device, dtype)
    table, source = peak_flops(env.device, dtype) if env.device.type == "cuda" else (measured, "measured")
    if env.device.type == "cuda":
        device = torch.cuda.get_device_name(env.device)
    else:
        device = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    t = cfg.train
    print(f"device: {device}; torch {torch.__version__}; load average {load[0]:.2f} at start, {load[1]:.2f} at end")
    print(f"measured: {args.config}: {cfg.model.name} at {cfg.model.img_size} px, global batch {t.global_batch} "
          f"(micro {t.micro_batch} x {run.accum}), {t.precision}, ZeRO {t.zero_stage}, {env.world_size} process; "
          f"forward {flops / 1e9:.3f} GFLOP/image; {args.rounds} round(s) of {args.steps} step(s), medians (range)")
    print(f"matmul peak {t.precision}: {measured / 1e12:.3f} TFLOP/s measured"
          + ("" if source == "measured" else f"; {table / 1e12:.1f} TFLOP/s {source} (used for MFU)"))
    step, lo, hi = median_range(out["train"])
    train_rate = t.global_batch / step
    train_mfu = TRAIN_FLOPS_PER_FORWARD * flops * train_rate / table
    print(f"  training step    {step:8.3f} s   ({lo:.3f}-{hi:.3f})  {train_rate:8.1f} img/s  MFU {train_mfu:6.1%}  "
          f"data wait {statistics.median(out['wait']):.1%}")
    images = {"val": evaluators["val"].manifest.num_samples,
              "fs": evaluators["fs"].train_manifest.num_samples + evaluators["fs"].val_manifest.num_samples}
    labels = {"val": f"val: classification, {images['val']} images",
              "fs": f"fs: few-shot {'/'.join(map(str, args.shots))}-shot x {len(cfg.evals['fs'].seeds)} seeds, "
                    f"{evaluators['fs'].train_manifest.num_samples} + {evaluators['fs'].val_manifest.num_samples} "
                    f"images"}
    seconds, speed = {}, {}
    for name in ("val", "fs"):
        seconds[name], lo, hi = median_range(out[name])
        rate = images[name] / seconds[name]
        speed[name] = rate / train_rate
        print(f"  {labels[name]}: {seconds[name]:.3f} s ({lo:.3f}-{hi:.3f}) = {seconds[name] / step:.1f} training "
              f"steps; {rate:.1f} img/s, MFU {flops * rate / table:.1%}")
    val, fs = out["result_val"][0], out["result_fs"][0]
    print(f"  (last results: top-1 {val['top1']:.2%}; "
          + ", ".join(f"{k} {v['mean']:.2%}" for k, v in fs.items()) + ")")
    print(f"  per-image speed evaluation/training: val {speed['val']:.2f}x, fs {speed['fs']:.2f}x "
          f"(FLOPs alone: {TRAIN_FLOPS_PER_FORWARD:.1f}x, i.e. equal MFU)")
    for every in args.every:
        between = every * step
        print(f"  every {every} steps: {between:.1f} s of training; evaluating val "
              f"{share(seconds['val'], between):.1%}, fs {share(seconds['fs'], between):.1%}, both "
              f"{share(seconds['val'] + seconds['fs'], between):.1%} of the wall time")
    every = args.every[0]
    both = (seconds["val"] + seconds["fs"]) / (every * step)
    print(f"ratio evaluation/training at every {every} steps: {both:.3f} (val {seconds['val'] / (every * step):.3f} "
          f"+ fs {seconds['fs'] / (every * step):.3f}); {share(seconds['val'] + seconds['fs'], every * step):.1%} "
          "of the wall time evaluating")


def solve_seconds(dim: int, classes: int, per_class: int, val: int, shots: int) -> float:
    """One seed of the few-shot least-squares fit and scoring at this size, on random clustered features."""
    rng = np.random.default_rng(0)
    train_y = np.repeat(np.arange(classes), per_class)
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    train_x = centers[train_y] + 2 * rng.standard_normal((len(train_y), dim), dtype=np.float32)
    val_y = rng.integers(0, classes, val)
    val_x = centers[val_y] + 2 * rng.standard_normal((val, dim), dtype=np.float32)
    start = time.perf_counter()
    fewshot_accuracy(train_x, train_y, val_x, val_y, shots=(shots,), seeds=(0,), num_classes=classes)
    return time.perf_counter() - start


def projected_model(args: argparse.Namespace) -> tuple[PretrainConfig, MlpMixer]:
    """The projection's config and its Mixer (on the meta device); ConfigError when they cannot be projected."""
    pcfg = load_config(ROOT / args.project_config, PretrainConfig)
    m = pcfg.model
    with torch.device("meta"):
        model = create_model(m.name, **m.overrides())
    if not is_mixer(model):
        raise ConfigError(f"{args.project_config}: model {m.name!r} is not an MLP-Mixer (FLOPs from its shapes)")
    if DTYPES[pcfg.train.precision] not in PEAK_FLOPS[args.assume_device]:
        raise ConfigError(f"{args.assume_device} has no {pcfg.train.precision} peak in pretrain/telemetry/mfu.py")
    return pcfg, model


def report_projected(args: argparse.Namespace, pcfg: PretrainConfig, model: MlpMixer) -> None:
    m, t = pcfg.model, pcfg.train
    flops = mixer_flops_per_image(model)
    devices = args.assume_devices or t.global_batch // t.micro_batch
    peak = PEAK_FLOPS[args.assume_device][DTYPES[t.precision]]
    rate = devices * peak * args.assume_mfu  # FLOP/s of the whole job, training and evaluation alike
    step_flops = TRAIN_FLOPS_PER_FORWARD * flops * t.global_batch
    train_pool = args.project_per_class * args.project_classes
    cls_flops = flops * args.project_val
    fs_flops = flops * (train_pool + args.project_val)
    solve_one = solve_seconds(model.num_features, args.project_classes, args.project_per_class, args.project_val,
                              args.project_shots)
    solve = solve_one * args.project_seeds
    step = step_flops / rate
    print(f"projected: {args.project_config}: {m.name} at {m.img_size} px, {m.num_classes}-class head, forward "
          f"{flops / 1e9:.2f} GFLOP/image (mixer_flops_per_image), global batch {t.global_batch}, {t.precision}")
    print(f"assumptions: {devices} x {args.assume_device} at {peak / 1e12:.1f} TFLOP/s {t.precision} (mfu.py table), "
          f"MFU {args.assume_mfu:.0%} for training and evaluation alike; training step = {TRAIN_FLOPS_PER_FORWARD} "
          f"forwards x {t.global_batch} images, evaluation = 1 forward per image; input pipeline, feature gather "
          f"and metric reduction not counted (assumed hidden); the FLOP-only shares do not depend on the device, "
          f"MFU or device count, the solve's share does")
    print(f"  training step: {step_flops:.3e} FLOP -> {step * 1e3:.1f} ms")
    print(f"  classification, {args.project_val:,} val images: {cls_flops:.3e} FLOP -> {cls_flops / rate:.3f} s "
          f"= {cls_flops / step_flops:.2f} training steps")
    print(f"  few-shot {args.project_shots}-shot, {args.project_per_class} x {args.project_classes} train + "
          f"{args.project_val:,} val features: {fs_flops:.3e} FLOP -> {fs_flops / rate:.3f} s = "
          f"{fs_flops / step_flops:.2f} training steps; least-squares solve (float64, host CPU, D="
          f"{model.num_features}, {args.project_classes} classes, measured on this machine's CPU: "
          f"{solve_one:.2f} s per seed) x {args.project_seeds} seeds = {solve:.1f} s")
    head = ["every (steps)", "training between", "classification", "few-shot (features)", "few-shot (+ solve)",
            "both (+ solve)"]
    rows = []
    for every in args.project_every:
        between = every * step
        cls_s, fs_s = cls_flops / rate, fs_flops / rate
        rows.append([f"{every}", f"{between:.1f} s", f"{share(cls_s, between):.3%}", f"{share(fs_s, between):.3%}",
                     f"{share(fs_s + solve, between):.2%}", f"{share(cls_s + fs_s + solve, between):.2%}"])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  share of the wall time between two evaluations spent evaluating:")
    for line in [head, ["-" * w for w in widths], *rows]:
        print("  | " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |")
    every = args.project_every[0]
    between = every * step
    print(f"ratio evaluation/training projected at every {every} steps: classification "
          f"{cls_flops / (every * step_flops):.3g}, few-shot {fs_flops / (every * step_flops):.3g} "
          f"(+ solve {(fs_flops / rate + solve) / between:.3g})")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = check(args)
    if not problem:
        try:
            demo_config(args, "train", "val")  # a bad --set, and a bad projection, fail in seconds
            projection = projected_model(args)
        except ConfigError as err:
            problem = str(err)
    if problem:
        print(f"bench_eval: {problem}", file=sys.stderr)
        return 2
    env = detect_env()
    init_distributed(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train = args.train_data or digits("train", Path(tmp) / "train")
            val = args.val_data or digits("val", Path(tmp) / "val")
            cfg = demo_config(args, train, val)
            load_start = os.getloadavg()[0]
            run = Run(cfg, Path(tmp) / "run", env)
            try:
                out = measure(args, run)
            finally:
                run.data.close()
                run.monitor.close()
            report_measured(args, cfg, run, out, (load_start, os.getloadavg()[0]))
        report_projected(args, *projection)
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
