"""Resuming the training stream late in an epoch: bytes read and seconds to the first step, by offset vs a replay.

Shards of small real JPEGs (tests/helpers_shards.py), one stream (1 rank, 1 worker, accumulation 1) so that the
stream's range is the whole epoch. The loader runs `--steps-before` steps, saves its position (90 % of the epoch by
default) and a new loader resumes from it; every byte a shard file delivers is counted (the shard indices are
small and read once, not counted). The replay that the stream did before the offset index read every sample of the
range up to the buffer's input cursor, pos + shuffle_buffer samples: its bytes are the sum of those samples' sizes
in the index (what the previous code read, by construction).

Run from the repository root:  .venv/bin/python -m benchmarks.bench_resume [--samples 20000] [--buffer 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from pretrain.data import build_train_loader, load_manifest, merge_states, remote, train_transform
from pretrain.data.shard_index import shard_index
from pretrain.data.streams import stream_pieces
from tests.helpers_shards import write_dataset


class _Counting:
    """A binary file that counts the bytes it delivers."""

    total = 0

    def __init__(self, path: str, mode: str):
        self.f = open(path, mode)  # noqa: SIM115

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        _Counting.total += len(data)
        return data

    def seek(self, offset: int) -> int:
        return self.f.seek(offset)

    def close(self) -> None:
        self.f.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--buffer", type=int, default=2000)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--at", type=float, default=0.9, help="resume at this fraction of the epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        per = args.samples // args.shards
        m = load_manifest(write_dataset(folder, [per] * args.shards, size=(32, 32)))

        def loader(state=None):
            return build_train_loader(m, micro_batch=args.micro_batch, accum=1, rank=0, world_size=1, workers=0,
                                      seed=0, transform=train_transform(32), shuffle_buffer=args.buffer, state=state)

        steps = int(args.at * m.num_samples) // args.micro_batch
        first = loader()
        state = None
        start = time.perf_counter()
        for _ in range(steps):
            state = next(first)["state"]
        first.close()
        print(f"{m.num_samples} samples in {args.shards} shards, {sum(s.bytes for s in m.shards) / 1e6:.1f} MB; "
              f"{steps} steps of {args.micro_batch} in {time.perf_counter() - start:.1f} s")
        pos = state["streams"]["0"]["pos"]
        pieces = stream_pieces(m.shard_sizes, first.layout, state["streams"]["0"]["round"], 0)
        sizes = [size for p in pieces for size in shard_index(m.shards[p.shard]).sizes[p.start:p.start + p.count]]
        replay = sum(sizes[: min(pos + args.buffer, len(sizes))])
        remote.open = _Counting  # every shard byte the resumed stream reads
        start = time.perf_counter()
        resumed = loader(merge_states([state]))
        next(resumed)
        seconds = time.perf_counter() - start
        resumed.close()
        print(f"resume at draw {pos} of {len(sizes)} (buffer {args.buffer}): read {_Counting.total / 1e6:.2f} MB "
              f"in {seconds:.2f} s to the first step; the replay read {replay / 1e6:.2f} MB "
              f"({replay / max(_Counting.total, 1):.0f}x more)")


if __name__ == "__main__":
    main()
