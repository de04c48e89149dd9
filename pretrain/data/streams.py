"""Pure functions that fix the data order: stream layout, epoch shard order, stream ranges, seeds.

No I/O here. The order of the training data is a function of (seed, epoch, V, W) only, where V = global
batch / micro-batch ("virtual ranks") and W = loader workers per rank. How V is split into ranks x
gradient-accumulation steps does not change it.

Epoch e: the shard list is shuffled with an RNG seeded from (seed, e); the shards, in that order and by
their manifest sample counts, form one sequence of N samples, cut into T = V x W contiguous ranges of
L = N // T samples (the last N - T*L samples of the epoch are dropped). Stream s = v * W + w reads range s.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# Seed domains, so that the shard order, the shuffle buffers and the augmentations never share a seed.
SHARD_ORDER = 1
SHUFFLE_BUFFER = 2
AUGMENT = 3
MIXUP = 4


def mix_seed(*values: int) -> int:
    """A 64-bit seed from non-negative integers, stable across processes, platforms and Python versions."""
    digest = hashlib.blake2b(struct.pack(f"<{len(values)}Q", *values), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class Piece:
    """Samples [start, start + count) of shard `shard` (an index into the manifest's shard list)."""

    shard: int
    start: int
    count: int


@dataclass(frozen=True)
class StreamLayout:
    """How one run cuts each epoch into streams; everything that defines the order of the data."""

    num_samples: int
    virtual_ranks: int
    workers: int
    micro_batch: int
    seed: int
    subset: str = "all"  # Manifest.subset: which samples of the shards are read
    shuffle_buffer: int = 0  # raw samples each stream's shuffle buffer holds
    shards: str = ""  # digest of the shard list (names, sizes, checksums): Manifest.digest

    @property
    def num_streams(self) -> int:
        """T = V x W."""
        return self.virtual_ranks * self.workers

    @property
    def range_size(self) -> int:
        """L: raw samples in each stream's range of one epoch."""
        return self.num_samples // self.num_streams

    @property
    def epoch_quota(self) -> int:
        """Good samples a stream delivers per epoch: whole micro-batches of its range; the rest is slack
        that replaces corrupt samples."""
        return self.range_size // self.micro_batch * self.micro_batch

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch: each stream serves every W-th step, L // m times per epoch."""
        return self.workers * (self.range_size // self.micro_batch)

    def stream_id(self, virtual_rank: int, worker: int) -> int:
        """s = v * W + w."""
        return virtual_rank * self.workers + worker


def make_layout(
    num_samples: int,
    *,
    micro_batch: int,
    accum: int,
    world_size: int,
    workers: int,
    seed: int,
    subset: str = "all",
    shuffle_buffer: int = 0,
    shards: str = "",
) -> StreamLayout:
    """Validate the batch arguments and build the layout (workers=0 counts as one worker)."""
    for name, value in (("micro_batch", micro_batch), ("accum", accum), ("world_size", world_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if seed < 0 or shuffle_buffer < 0:
        raise ValueError(f"seed and shuffle_buffer must be >= 0, got {seed} and {shuffle_buffer}")
    layout = StreamLayout(
        num_samples, accum * world_size, max(workers, 1), micro_batch, seed, subset, shuffle_buffer, shards
    )
    if layout.range_size < micro_batch:
        raise ValueError(
            f"dataset too small: {num_samples} samples over {layout.num_streams} streams "
            f"({layout.virtual_ranks} virtual ranks x {layout.workers} workers) gives "
            f"{layout.range_size} per stream, fewer than micro_batch={micro_batch}"
        )
    return layout


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """The shard indices in the order epoch `epoch` reads them."""
    order = list(range(num_shards))
    random.Random(mix_seed(seed, SHARD_ORDER, epoch)).shuffle(order)
    return order


def slice_concatenation(
    shard_sizes: Sequence[int], order: Sequence[int], start: int, count: int
) -> list[Piece]:
    """Samples [start, start + count) of the concatenation of the shards in `order`, as per-shard pieces."""
    pieces: list[Piece] = []
    offset = 0
    end = start + count
    for shard in order:
        size = shard_sizes[shard]
        lo, hi = max(start, offset), min(end, offset + size)
        if lo < hi:
            pieces.append(Piece(shard, lo - offset, hi - lo))
        offset += size
        if offset >= end:
            break
    return pieces


def stream_pieces(shard_sizes: Sequence[int], layout: StreamLayout, epoch: int, stream: int) -> list[Piece]:
    """What stream `stream` reads in epoch `epoch`, in order."""
    order = epoch_shard_order(len(shard_sizes), layout.seed, epoch)
    size = layout.range_size
    return slice_concatenation(shard_sizes, order, stream * size, size)


def describe_assignment(shard_sizes: Sequence[int], layout: StreamLayout, epoch: int) -> list[list[Piece]]:
    """Every stream's pieces in epoch `epoch`, indexed by stream id."""
    return [stream_pieces(shard_sizes, layout, epoch, s) for s in range(layout.num_streams)]


def rank_virtual_ranks(rank: int, accum: int) -> range:
    """The virtual ranks rank `rank` owns: micro-batch a of its step is virtual rank rank * accum + a."""
    return range(rank * accum, (rank + 1) * accum)


def worker_slot(first_step: int, worker: int, workers: int) -> int:
    """The stream worker index w served by DataLoader worker `worker` when iteration starts at `first_step`.

    The DataLoader hands out items round robin from worker 0, so its worker j yields steps
    first_step + j, first_step + j + W, ...; step k reads the streams of worker index k mod W.
    """
    return (first_step + worker) % workers


def eval_pieces(shard_sizes: Sequence[int], part: int, num_parts: int) -> list[Piece]:
    """Part `part` of `num_parts` near-equal contiguous parts of the unshuffled concatenation (no padding)."""
    total = sum(shard_sizes)
    start, end = part * total // num_parts, (part + 1) * total // num_parts
    return slice_concatenation(shard_sizes, range(len(shard_sizes)), start, end - start)
