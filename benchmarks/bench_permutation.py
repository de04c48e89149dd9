"""Cost of the fixed input permutation (augment.permute) on top of the device-side normalisation.

Run from the repository root: ``.venv/bin/python -m benchmarks.bench_permutation [--device cuda]``. Times
`DevicePreprocess` (uint8 batch -> normalised bf16) of a (64, 3, 224, 224) batch without a permutation and with
each mode (patch 16), median of 20 calls after a warm-up, and building the permutation once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pretrain.data import DevicePreprocess, FixedPermutation


def median_ms(fn, device: torch.device, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    device = torch.device(parser.parse_args().device)
    torch.set_num_threads(2)
    images = torch.randint(0, 256, (64, 3, 224, 224), dtype=torch.uint8, device=device)
    mean = std = (0.5, 0.5, 0.5)
    start = time.perf_counter()
    FixedPermutation("patches", 0, 224, 16)
    print(f"build FixedPermutation('patches', 224 px, patch 16): {1e3 * (time.perf_counter() - start):.1f} ms")
    base = median_ms(lambda: DevicePreprocess(mean, std, torch.bfloat16)(images), device)
    print(f"normalise only: {base:.1f} ms")
    for mode in ("patches", "pixels"):
        pre = DevicePreprocess(mean, std, torch.bfloat16, FixedPermutation(mode, 0, 224, 16))
        ms = median_ms(lambda pre=pre: pre(images), device)
        print(f"normalise + permute {mode!r}: {ms:.1f} ms ({ms / base:.2f}x)")


if __name__ == "__main__":
    main()
