"""What the ConViT statistics cost at a logging step, against the no-grad eval forward they contain.

    .venv/bin/python -m benchmarks.bench_convit_stats --models convit_tiny convit_small --images 8 --rounds 7
"""

import argparse
import statistics
import time

import timm
import torch

from pretrain.telemetry.convit_stats import convit_scalars


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median seconds of a no-grad eval forward and of `convit_scalars`, in alternating rounds after a warm-up."""

    def forward() -> None:
        with torch.no_grad():
            model.eval()(x)

    def stats() -> None:
        convit_scalars(model, x)

    forward(), stats()
    plain, ours = [], []
    for _ in range(rounds):  # alternating, so both see the same neighbours
        plain.append(_seconds(forward))
        ours.append(_seconds(stats))
    return statistics.median(plain), statistics.median(ours)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["convit_tiny", "convit_small"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for name in args.models:
        for dtype in (torch.float32, torch.bfloat16):
            model = timm.create_model(name).to(dtype)
            p, s = compare(model, torch.randn(args.images, 3, 224, 224).to(dtype), args.rounds)
            print(f"{name} {str(dtype).removeprefix('torch.')} x{args.images}: forward {p * 1e3:.0f} ms, "
                  f"convit_scalars {s * 1e3:.0f} ms ({s / p:.2f}x)")


if __name__ == "__main__":
    main()
