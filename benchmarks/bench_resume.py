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
from dataclasses import dataclass
from unittest import mock

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


@dataclass(frozen=True)
class ResumeCost:
    """What a resume at a position costs: the new seek against the replay the stream did before."""

    samples: int
    shard_bytes: int
    pos: int
    range_size: int
    bytes_read: int
    seconds: float
    replay_bytes: int


def measure(folder: str, samples: int = 20000, shards: int = 20, buffer: int = 2000, micro_batch: int = 8,
            at: float = 0.9, log=print) -> ResumeCost:
    """Build the shards in `folder`, run to `at` of the epoch, resume: bytes and seconds to the first step."""
    per = samples // shards
    m = load_manifest(write_dataset(folder, [per] * shards, size=(32, 32)))

    def loader(state=None):
        return build_train_loader(m, micro_batch=micro_batch, accum=1, rank=0, world_size=1, workers=0,
                                  seed=0, transform=train_transform(32), shuffle_buffer=buffer, state=state)

    steps = int(at * m.num_samples) // micro_batch
    first = loader()
    state = None
    start = time.perf_counter()
    for _ in range(steps):
        state = next(first)["state"]
    first.close()
    shard_bytes = sum(s.bytes for s in m.shards)
    log(f"{m.num_samples} samples in {shards} shards, {shard_bytes / 1e6:.1f} MB; "
        f"{steps} steps of {micro_batch} in {time.perf_counter() - start:.1f} s")
    pos = state["streams"]["0"]["pos"]
    pieces = stream_pieces(m.shard_sizes, first.layout, state["streams"]["0"]["round"], 0)
    sizes = [size for p in pieces for size in shard_index(m.shards[p.shard]).sizes[p.start:p.start + p.count]]
    replay = sum(sizes[: min(pos + buffer, len(sizes))])
    _Counting.total = 0
    with mock.patch.object(remote, "open", _Counting, create=True):  # every shard byte the resumed stream reads
        start = time.perf_counter()
        resumed = loader(merge_states([state]))
        next(resumed)
        seconds = time.perf_counter() - start
        resumed.close()
    return ResumeCost(m.num_samples, shard_bytes, pos, len(sizes), _Counting.total, seconds, replay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--buffer", type=int, default=2000)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--at", type=float, default=0.9, help="resume at this fraction of the epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        c = measure(folder, args.samples, args.shards, args.buffer, args.micro_batch, args.at)
    print(f"resume at draw {c.pos} of {c.range_size} (buffer {args.buffer}): read {c.bytes_read / 1e6:.2f} MB "
          f"in {c.seconds:.2f} s to the first step; the replay read {c.replay_bytes / 1e6:.2f} MB "
          f"({c.replay_bytes / max(c.bytes_read, 1):.0f}x more)")


if __name__ == "__main__":
    main()
