"""Data subsets: how fast the label scan runs, and what reading a 10 % subset of a shard costs against all of it.

Shards of ImageNet-like samples (a 110 KB `jpg` member of random bytes, never decoded here, plus `cls` and `json`),
1000 per shard. Timed: scan_labels over local shards (from their indices, no shard read) and over
`pipe:cat` URLs (streamed whole); read_pieces of whole shards, without and with a 10 % selection. The files were
just written, so they come from the page cache: these are CPU costs, not disk speed.

Run from the repository root:  .venv/bin/python -m benchmarks.bench_subset [--shards 4] [--image-kb 110]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

from pretrain.data import load_manifest
from pretrain.data.shard_index import shard_index
from pretrain.data.shard_reader import read_pieces
from pretrain.data.streams import Piece
from pretrain.data.subset import scan_labels, select_subset
from tests.helpers_shards import sample, write_manifest, write_shard

PER_SHARD = 1000


def build(folder: str, shards: int, image_kb: int) -> str:
    names = []
    for s in range(shards):
        name = f"shard-{s:04d}.tar"
        samples = (sample(f"s{s:02d}{i:05d}", os.urandom(image_kb * 1024), i % 100) for i in range(PER_SHARD))
        write_shard(os.path.join(folder, name), samples)
        names.append(name)
    return write_manifest(folder, names, [PER_SHARD] * shards, 100)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--image-kb", type=int, default=110)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        m = load_manifest(build(folder, args.shards, args.image_kb))
        n = m.num_samples
        shard_index.cache_clear()
        labels, t = timed(lambda: scan_labels(m, threads=1))
        print(f"scan, local (the shards' indices), 1 thread:  {n / t:9.0f} samples/s")
        shard_index.cache_clear()
        _, t = timed(lambda: scan_labels(m, threads=2))
        print(f"scan, local (the shards' indices), 2 threads: {n / t:9.0f} samples/s")
        pipes = tuple(dataclasses.replace(s, name=f"pipe:cat {s.url}", url=f"pipe:cat {s.url}") for s in m.shards)
        _, t = timed(lambda: scan_labels(dataclasses.replace(m, shards=pipes), threads=1))
        print(f"scan, pipe:cat (no index: streamed), 1 thread: {n / t:9.0f} samples/s")
        urls = [s.url for s in m.shards]
        everything = [Piece(i, 0, PER_SHARD) for i in range(len(urls))]
        _, t_all = timed(lambda: sum(1 for _ in read_pieces(urls, everything, print)))
        selections = select_subset(labels, 0.1, 0)
        pieces = [Piece(i, 0, len(sel)) for i, sel in enumerate(selections)]
        kept, t_sub = timed(lambda: sum(1 for _ in read_pieces(urls, pieces, print, selections)))
        print(f"read all {n} samples: {t_all:.2f} s ({n / t_all:.0f} samples/s); "
              f"read the 10 % subset ({kept} samples): {t_sub:.2f} s ({kept / t_sub:.0f} kept samples/s)")


if __name__ == "__main__":
    main()
