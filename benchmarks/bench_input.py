"""Training input throughput: our WebDataset pipeline against timm's loader, same images, same augmentation.

Both sides: RandomResizedCrop 224 (scale 0.08-1, ratio 3/4-4/3, bilinear) + horizontal flip 0.5 +
RandAugment rand-m9-mstd0.5 (timm's; the -inc1 variant crashes stock timm under Pillow 13), mean/std 0.5.
  ours       shards + build_train_loader + train_transform: libjpeg-turbo decode of the crop at a DCT reduction
             (data.jpeg_decoder turbo), uint8 out (normalised later)
  ours-pil   the same with jpeg_decoder pil: PIL draft decode (the same pixels)
  ours-device the loader of data.decode device: workers read the bytes and draw the parameters only (the CPU cost
             per image of that path; decoding and augmenting are the device's, measured by gpu_check.py)
  timm       ImageFolder of the same JPEG files + timm.data.create_transform + torch DataLoader (float out)
  timm-uint8 the same with create_transform(use_prefetcher=True): uint8 out, as timm's GPU prefetcher uses
Images: JPEGs (quality 90, long side 500 px or --long-side) cut from the sklearn / skimage photos.

Run from the repository root:  .venv/bin/python -m benchmarks.bench_input [--long-side 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from benchmarks.photos import source_photos
from pretrain.data import build_train_loader, load_manifest, train_transform
from pretrain.data.device_params import DeviceParamsTransform
from tests.helpers_shards import encode, sample, write_manifest, write_shard

SIZE = 224
RANDAUGMENT = "rand-m9-mstd0.5"
MEAN = STD = (0.5, 0.5, 0.5)
CLASSES = 10


def make_jpegs(n: int, long_side: int = 500, seed: int = 0) -> list[bytes]:
    """n JPEGs with a `long_side` px long side: random crops (40-100% of the area), flips, aspect ratios."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    out = []
    for i in range(n):
        src = photos[i % len(photos)]
        h, w = src.shape[:2]
        frac = np.sqrt(rng.uniform(0.4, 1.0))
        ch, cw = int(h * frac), int(w * frac)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        img = Image.fromarray(src[y : y + ch, x : x + cw])
        aspect = rng.uniform(0.66, 0.8)
        size = (
            (long_side, int(long_side * aspect))
            if rng.random() < 0.7
            else (int(long_side * aspect), long_side)
        )
        img = img.resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(encode(img, quality=90))
    return out


def write_both(folder: str, jpegs: list[bytes], per_shard: int = 100) -> str:
    """The same JPEGs as tar shards with a manifest, and as an ImageFolder tree; returns the manifest path."""
    names, counts = [], []
    for s in range(0, len(jpegs), per_shard):
        part = jpegs[s : s + per_shard]
        name = f"shard-{s // per_shard:04d}.tar"
        write_shard(
            os.path.join(folder, name),
            [sample(f"s{s + i:06d}", b, (s + i) % CLASSES) for i, b in enumerate(part)],
        )
        names.append(name)
        counts.append(len(part))
    for i, b in enumerate(jpegs):
        d = os.path.join(folder, "folder", f"c{i % CLASSES}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:06d}.jpg"), "wb") as f:
            f.write(b)
    return write_manifest(folder, names, counts, CLASSES)


def _children_cpu() -> float:
    """CPU seconds used so far by this process's live child processes (the loader workers)."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except FileNotFoundError:
                    continue
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def throughput(batches: Iterable, warmup: int, count: int) -> tuple[float, float]:
    """(images per second, images per CPU-second of all our processes) over `count` batches after `warmup`.

    Images per CPU-second is the per-core figure; unlike the wall-clock rate it does not depend on what else
    runs on a shared machine."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    cpu0, t0 = time.process_time() + _children_cpu(), time.perf_counter()
    n = 0
    for _ in range(count):
        item = next(it)
        n += len(item["image"] if isinstance(item, dict) else item[0])
    cpu1, t1 = time.process_time() + _children_cpu(), time.perf_counter()
    return n / (t1 - t0), n / (cpu1 - cpu0)


def ours(manifest_path: str, workers: int, batch: int, decoder: str, device: bool = False) -> Iterable:
    transform = train_transform(SIZE, randaugment=RANDAUGMENT, mean=MEAN, std=STD, jpeg_decoder=decoder)
    return build_train_loader(
        load_manifest(manifest_path),
        micro_batch=batch,
        accum=1,
        rank=0,
        world_size=1,
        workers=workers,
        seed=0,
        transform=DeviceParamsTransform(transform) if device else transform,
        shuffle_buffer=64,
    )


def timm_loader(folder: str, workers: int, batch: int, uint8: bool) -> Iterable:
    transform = create_transform(
        SIZE,
        is_training=True,
        auto_augment=RANDAUGMENT,
        interpolation="bilinear",
        mean=MEAN,
        std=STD,
        use_prefetcher=uint8,
    )
    dataset = ImageFolder(os.path.join(folder, "folder"), transform=transform)
    return DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480, help="JPEGs to write (default 480)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per run (default 12)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per setting; the best is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--long-side", type=int, default=500, help="JPEG long side, px (default 500)")
    args = parser.parse_args(argv)
    if args.images < args.batch * (args.batches + 2) // 2:
        print("error: --images too small for --batch x --batches", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        jpegs = make_jpegs(args.images, args.long_side)
        manifest = write_both(folder, jpegs)
        sizes = [Image.open(os.path.join(folder, "folder", "c0", "000000.jpg")).size]
        print(f"{len(jpegs)} JPEGs, mean {np.mean([len(b) for b in jpegs]) / 1024:.0f} KiB, e.g. {sizes[0]}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        setups: dict[str, Callable[[int], Iterable]] = {
            "ours": lambda w: ours(manifest, w, args.batch, "turbo"),
            "ours-pil": lambda w: ours(manifest, w, args.batch, "pil"),
            "ours-device": lambda w: ours(manifest, w, args.batch, "turbo", device=True),
            "timm": lambda w: timm_loader(folder, w, args.batch, uint8=False),
            "timm-uint8": lambda w: timm_loader(folder, w, args.batch, uint8=True),
        }
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):  # interleave rounds: the machine is shared, its load drifts
            for w in args.workers:
                for name, make in setups.items():
                    loader = make(w)
                    results.setdefault((name, w), []).append(throughput(loader, 2, args.batches))
                    del loader
                    gc.collect()
        print(
            f"\n| loader | workers | img/s (best of {args.rounds}) | img per CPU-second | per core vs timm |"
        )
        print("| --- | --- | --- | --- | --- |")
        for w in args.workers:
            base = max(c for _, c in results[("timm", w)])
            for name in setups:
                wall = max(r for r, _ in results[(name, w)])
                cpu = max(c for _, c in results[(name, w)])
                print(f"| {name} | {w} | {wall:.0f} | {cpu:.0f} | {cpu / base:.2f}x |")
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
