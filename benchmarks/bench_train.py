"""End-to-end training throughput: our DeepSpeed trainer against a plain PyTorch loop, interleaved in one run.

Both sides read the same shards through the same input pipeline with the same batch. Ours: `pretrain.run`'s
step (DeepSpeed engine, ZeRO stage as given, bf16 = DeepSpeed's bf16 model with fp32 master weights). The peer:
timm's `MlpMixer` of the same variant, torch AdamW, `torch.autocast` in the same precision, clipping at norm 1 -
what a PyTorch user writes by hand. Rounds alternate (ours, plain, ours, ...) and medians are reported with
img/s, MFU (against a matmul peak measured in the same run, or the device's table peak on a GPU) and data wait.

    python benchmarks/bench_train.py                      # CPU default: mixer_s16 at 112 px, bf16, ZeRO 1
    python benchmarks/bench_train.py --model mixer_l16 --img-size 224 --batch 64 --steps 20   # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pretrain.cluster.distributed import detect_env, init_distributed  # noqa: E402
from pretrain.components.engine import DTYPES  # noqa: E402
from pretrain.components.train_data import TrainData  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.data import normalize_on_device  # noqa: E402
from pretrain.models import mixer_flops_per_image  # noqa: E402
from pretrain.run import Run  # noqa: E402
from pretrain.telemetry.mfu import mfu, peak_flops  # noqa: E402

TIMM_NAMES = {"mixer_s16": "mixer_s16_224", "mixer_s32": "mixer_s32_224", "mixer_b16": "mixer_b16_224",
              "mixer_b32": "mixer_b32_224", "mixer_l16": "mixer_l16_224", "mixer_l32": "mixer_l32_224"}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mixer_s16", choices=sorted(TIMM_NAMES))
    p.add_argument("--img-size", type=int, default=112)
    p.add_argument("--batch", type=int, default=32, help="per-step batch (one rank, no accumulation)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--zero-stage", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data", default=None, help="shard folder (default: digits rendered at --img-size)")
    return p.parse_args()


def digits_shards(img_size: int, out: Path) -> Path:
    import subprocess

    subprocess.run([sys.executable, "-m", "data_prep", "build", "--layout", "digits", "--source", "digits",
                    "--split", "train", "--image-size", str(img_size), "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True)
    return out


def config(args: argparse.Namespace, data: str) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.model.name, cfg.model.img_size, cfg.model.num_classes = args.model, args.img_size, 10
    cfg.data.train, cfg.data.workers, cfg.data.shuffle_buffer = data, args.workers, 256
    cfg.train.global_batch = cfg.train.micro_batch = args.batch
    cfg.train.precision, cfg.train.zero_stage = args.precision, args.zero_stage
    if args.precision == "bf16" and args.zero_stage == 0:
        cfg.train.grad_accum_dtype = "bf16"  # DeepSpeed's only ZeRO-0 bf16 path
    cfg.train.steps = 10**9
    cfg.schedule.warmup_steps = 10
    cfg.augment.hflip = 0.5
    return cfg


class PlainLoop:
    """The peer: timm's MlpMixer, torch AdamW, autocast, clipping: a hand-written PyTorch training step."""

    def __init__(self, cfg: PretrainConfig, device: torch.device) -> None:
        torch.manual_seed(0)
        self.model = timm.create_model(TIMM_NAMES[cfg.model.name], pretrained=False, num_classes=10,
                                       img_size=cfg.model.img_size).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1,
                                     fused=device.type == "cuda")
        self.cfg, self.device = cfg, device
        self.dtype = DTYPES[cfg.train.precision]

    def train_step(self, item: dict) -> float:
        a = self.cfg.augment
        x = normalize_on_device(item["image"].to(self.device, non_blocking=True), a.mean, a.std, torch.float32)
        y = item["label"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            loss = F.cross_entropy(self.model(x).float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.item()


def timed_round(step, items, steps: int) -> tuple[float, float]:
    """(seconds for `steps` steps, seconds of them spent waiting for data)."""
    wait = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        item = next(items)
        wait += time.perf_counter() - t0
        step(item)
    return time.perf_counter() - start, wait


def main() -> int:
    args = parse()
    os.environ.setdefault("MASTER_PORT", "29571")
    env = detect_env()
    init_distributed(env)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or str(digits_shards(args.img_size, Path(tmp) / "shards"))
        cfg = config(args, data)
        ours = Run(cfg, Path(tmp) / "run", env)
        plain = PlainLoop(cfg, env.device)
        ours_items, plain_items = ours.data, TrainData(cfg, env, Path(tmp) / "run", ours.accum)

        def ours_step(item) -> float:
            return ours.engine.step(ours.micro_batches(item)).loss.item()

        for _ in range(2):  # warm-up: oneDNN kernel selection, loader start-up
            ours_step(next(ours_items))
            plain.train_step(next(plain_items))
        results: dict[str, list[tuple[float, float]]] = {"ours": [], "plain": []}
        for _ in range(args.rounds):
            results["ours"].append(timed_round(ours_step, ours_items, args.steps))
            results["plain"].append(timed_round(plain.train_step, plain_items, args.steps))
        flops = mixer_flops_per_image(ours.engine.module)
        peak, source = peak_flops(env.device, DTYPES[args.precision])
        device = torch.cuda.get_device_name() if env.device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
        print(f"device: {device}; model {args.model} at {args.img_size} px, batch {args.batch}, {args.precision}, "
              f"ZeRO {args.zero_stage} (ours); peak {peak / 1e12:.2f} TFLOP/s ({source})")
        rates = {}
        for name, rounds in results.items():
            seconds = statistics.median(r[0] for r in rounds)
            wait = statistics.median(r[1] / r[0] for r in rounds)
            rates[name] = args.steps * args.batch / seconds
            print(f"{name:6s} {rates[name]:8.1f} img/s  MFU {mfu(flops, rates[name], 1, peak):6.1%}  "
                  f"data wait {wait:5.1%}")
        print(f"ratio ours/plain: {rates['ours'] / rates['plain']:.3f} "
              f"(DeepSpeed overhead {1 - rates['ours'] / rates['plain']:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
