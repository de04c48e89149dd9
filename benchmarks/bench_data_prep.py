"""Shard-build throughput of data_prep against a plain decode+resize+encode loop, with 1 and 2 workers.

Makes a few hundred ~500 px JPEGs (seeded crops of the scikit-learn / scikit-image photos) in a temporary
class-folder tree, then measures in the same run:
  * plain loop: read file, PIL decode (draft mode as data_prep uses it), RGB, resize shorter side to 256,
    JPEG quality 90, in one process: the limit for one worker; and the same loop in 2 processes (half the
    images each): what 2 workers can reach on this machine;
  * ``data_prep`` build with ``--resize-shorter 256 --quality 90`` and 1 and 2 workers (everything included:
    listing, shuffle, validation, tar writing, hashing, fsync, manifest; pool start-up for 2 workers).
The three run in turn, ``--repeats`` times; each figure is the best run. Wall-clock and CPU time (this
process plus its worker processes) are both reported: on a shared machine the CPU figure is the steadier
measure of per-worker cost. Usage:
  python benchmarks/bench_data_prep.py [--images 400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.photos import source_photos  # noqa: E402
from data_prep.build import build  # noqa: E402
from data_prep.encode import target_size  # noqa: E402
from data_prep.options import BuildOptions  # noqa: E402

SHORTER, QUALITY = 256, 90


def make_tree(root: str, num_images: int, num_classes: int = 10, seed: int = 0) -> int:
    """``num_images`` JPEGs (long side 500, ImageNet-like aspect, quality 90) in ``num_classes`` folders."""
    rng = random.Random(seed)
    photos = source_photos()
    total = 0
    for i in range(num_images):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.randint(h * 2 // 3, h), rng.randint(w * 2 // 3, w)
        y, x = rng.randint(0, h - ch), rng.randint(0, w - cw)
        image = Image.fromarray(photo[y : y + ch, x : x + cw])
        scale = 500 / max(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
        folder = os.path.join(root, f"class{i % num_classes:02d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"img{i:05d}.jpg")
        image.save(path, "JPEG", quality=90)
        total += os.path.getsize(path)
    return total


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(work: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its reaped children) of ``work()``."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    work()
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def plain_loop(paths: list[str]) -> None:
    """The same per-image work as data_prep, as a bare loop in this process (the per-worker limit)."""
    for path in paths:
        with open(path, "rb") as f:
            image = Image.open(io.BytesIO(f.read()))
        size = target_size(image.width, image.height, SHORTER)
        if size is not None:
            image.draft(image.mode, size)
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGB")
        if size is not None:
            image = image.resize(size, Image.Resampling.BICUBIC)
        image.save(io.BytesIO(), "JPEG", quality=QUALITY)


def plain_loop_2(paths: list[str]) -> None:
    """The plain loop in 2 processes, half the images each: what 2 workers can reach on this machine."""
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(plain_loop, [paths[0::2], paths[1::2]])


def data_prep_build(src: str, out: str, workers: int, block: int) -> None:
    """A whole data_prep build into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    options = BuildOptions(
        layout="folders",
        source=src,
        out=out,
        resize_shorter=SHORTER,
        quality=QUALITY,
        shard_max_samples=block,
        workers=workers,
    )
    build(options, log=lambda line: None)


def report(n: int, runs: dict[str, list[tuple[float, float]]]) -> None:
    """Print images/s (wall and per CPU-second) and the ratios to the plain loop."""
    wall = {k: min(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: min(c for _, c in v) for k, v in runs.items()}
    print(f"{'':22} {'images/s':>9} {'per worker':>11} {'vs plain':>9} | {'per CPU-s':>9} {'vs plain':>9}")
    rows = (
        ("plain", "plain loop, 1 process", 1),
        ("one", "data_prep, 1 worker", 1),
        ("plain2", "plain loop, 2 processes", 2),
        ("two", "data_prep, 2 workers", 2),
    )
    for name, label, workers in rows:
        per_worker = n / wall[name] / workers
        print(
            f"{label:22} {n / wall[name]:9.1f} {per_worker:11.1f} {per_worker * wall['plain'] / n:8.2f}x | "
            f"{n / cpu[name]:9.1f} {cpu['plain'] / cpu[name]:8.2f}x"
        )
    print(
        f"2 workers vs 1: {wall['one'] / wall['two']:.2f}x wall-clock; vs the 2-process plain loop: "
        f"{wall['plain2'] / wall['two']:.2f}x; {os.cpu_count()} CPU cores visible"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "out")
        size = make_tree(src, args.images)
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(src) for f in files)
        block = args.images // 4  # 4 blocks (shards), so that 2 workers share the work evenly
        print(
            f"{len(paths)} JPEGs, {size / len(paths) / 1e3:.0f} KB each on average; "
            f"--resize-shorter {SHORTER} --quality {QUALITY}, shard-max-samples {block}"
        )
        runs: dict[str, list[tuple[float, float]]] = {"plain": [], "one": [], "plain2": [], "two": []}
        for _ in range(args.repeats):  # in turn, so that each sees the same machine load
            runs["plain"].append(timed(lambda: plain_loop(paths)))
            runs["one"].append(timed(lambda: data_prep_build(src, out, 1, block)))
            runs["plain2"].append(timed(lambda: plain_loop_2(paths)))
            runs["two"].append(timed(lambda: data_prep_build(src, out, 2, block)))
    report(len(paths), runs)


if __name__ == "__main__":
    main()
