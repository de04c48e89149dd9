"""Training-step throughput of our MLP-Mixer against timm's, and the fraction of a measured matmul peak.

Both models are built with the same configuration and the same weights; each step is forward + backward +
AdamW step on random images and labels. Rounds alternate ours, timm, ours, timm ... and medians are reported,
so drift in machine load hits both alike; the ratio is also given per round (each round's two neighbouring
measurements), which is the steadier figure on a shared machine. The peak is the best FLOP/s of a large square
matmul in the same precision, timed in the same run; achieved FLOP/s = 3 x forward FLOPs per image x images/s.

    .venv/bin/python -m benchmarks.bench_model --model mixer_b16 --batch 4 --rounds 11 --precision both
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from timm.models.mlp_mixer import MlpMixer as TimmMlpMixer
from torch import nn

from pretrain.models import MlpMixer, create_model, list_models, mixer_flops_per_image

WARMUP_STEPS = 3


def timm_twin(model: MlpMixer) -> nn.Module:
    """timm's MlpMixer with the same configuration as ``model``, holding a copy of its weights."""
    dim = model.num_features
    tokens_dim = model.blocks[0].mlp_tokens.fc1.out_features
    channels_dim = model.blocks[0].mlp_channels.fc1.out_features
    twin = TimmMlpMixer(
        num_classes=model.num_classes,
        img_size=model.img_size,
        in_chans=model.stem.proj.in_channels,
        patch_size=model.patch_size,
        num_blocks=len(model.blocks),
        embed_dim=dim,
        mlp_ratio=(tokens_dim / dim, channels_dim / dim),
    )
    twin.load_state_dict(model.state_dict())
    return twin


def autocast_for(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str
) -> Callable[[], None]:
    """A closure running one training step of ``model`` on the batch (images, labels)."""
    model.to(images.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    autocast = autocast_for(images.device, precision)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(step: Callable[[], None], batch: int, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def matmul_peak(device: torch.device, precision: str, size: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of a size x size matmul in ``precision``."""
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def bench(args: argparse.Namespace, precision: str, device: torch.device) -> None:
    torch.manual_seed(0)
    ours = create_model(args.model)
    flops = mixer_flops_per_image(ours)
    theirs = timm_twin(ours)
    images = torch.randn(args.batch, ours.stem.proj.in_channels, ours.img_size, ours.img_size, device=device)
    labels = torch.randint(0, ours.num_classes, (args.batch,), device=device)
    steps = {
        "ours": make_step(ours, images, labels, precision),
        "timm": make_step(theirs, images, labels, precision),
    }
    peak = matmul_peak(device, precision)
    for step in steps.values():  # warm-up: oneDNN builds its bf16 kernels over the first ~3 steps on a CPU
        for _ in range(WARMUP_STEPS):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(images_per_second(step, args.batch, args.steps, device))
    peak = max(peak, matmul_peak(device, precision))
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(
        f"{args.model} batch {args.batch} {precision} on {device.type}: "
        f"{args.rounds} rounds x {args.steps} steps, "
        f"forward {flops / 1e9:.2f} GFLOP/img, matmul peak {peak / 1e9:.0f} GFLOP/s"
    )
    for name, value in median.items():
        achieved = 3 * flops * value
        spread = ", ".join(f"{r:.2f}" for r in rates[name])
        print(
            f"  {name:5s} {value:8.2f} img/s  ({achieved / 1e9:.0f} GFLOP/s, {achieved / peak:.1%} of peak)"
            f"  rounds: {spread}"
        )
    paired = sorted(ours / timm for ours, timm in zip(rates["ours"], rates["timm"], strict=True))
    print(
        f"  ratio ours/timm: {median['ours'] / median['timm']:.3f} (of medians); "
        f"per round: median {statistics.median(paired):.3f}, range {paired[0]:.3f}-{paired[-1]:.3f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mixer_b16", help=f"one of {', '.join(list_models())}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed round")
    parser.add_argument("--rounds", type=int, default=11, help="timed rounds per model, alternating")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.model not in list_models():
            raise ValueError(f"unknown model {args.model!r}; known models: {', '.join(list_models())}")
        if min(args.batch, args.steps, args.rounds) < 1:
            raise ValueError("--batch, --steps and --rounds must be positive")
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda given but no CUDA device is available")
    except (ValueError, RuntimeError) as err:
        print(f"bench_model: {err}", file=sys.stderr)
        return 2
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} CPU threads"
    )
    print(f"torch {torch.__version__}, {where}")
    for precision in precisions:
        bench(args, precision, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
