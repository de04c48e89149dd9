"""Pure functions that fix the data order: stream layout, epoch shard order, stream ranges, seeds.

No I/O here. The order of the training data is a function of (seed, V, W, m) only, where V = global batch /
micro-batch ("virtual ranks"), W = loader workers per rank and m the micro-batch. How V is split into ranks x
gradient-accumulation steps does not change it.

The data is one endless sequence: epoch 0's shards in their shuffled order (an RNG seeded from (seed, 0)), then
epoch 1's, ...; epoch e is positions [e*N, (e+1)*N), every sample once. The sequence is read in rounds of T*Q
consecutive positions (T = V x W streams, Q = N // T rounded down to whole micro-batches): stream s = v * W + w
reads positions [r*T*Q + s*Q, r*T*Q + (s+1)*Q) in round r. Rounds tile the sequence, so nothing is dropped: the
N - T*Q samples a round leaves at the end of an epoch open the next round, and every sample is read exactly once per
epoch for any V, W and m. A round may span two epochs.
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
        """Q: positions each stream reads per round, whole micro-batches (N // T rounded down to a multiple of m)."""
        return self.num_samples // self.num_streams // self.micro_batch * self.micro_batch

    @property
    def round_size(self) -> int:
        """T x Q: positions of the endless sequence read per round."""
        return self.num_streams * self.range_size

    @property
    def steps_per_round(self) -> int:
        """Training steps per round: each stream serves every W-th step, Q // m times per round."""
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
            f"{num_samples // layout.num_streams} per stream, fewer than micro_batch={micro_batch}"
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


def sequence_pieces(shard_sizes: Sequence[int], seed: int, start: int, count: int) -> list[Piece]:
    """Positions [start, start + count) of the endless sequence (epoch 0's shard order, then epoch 1's, ...)."""
    total = sum(shard_sizes)
    pieces: list[Piece] = []
    while count > 0:
        epoch, offset = divmod(start, total)
        n = min(count, total - offset)
        pieces += slice_concatenation(shard_sizes, epoch_shard_order(len(shard_sizes), seed, epoch), offset, n)
        start, count = start + n, count - n
    return pieces


def stream_pieces(shard_sizes: Sequence[int], layout: StreamLayout, round_: int, stream: int) -> list[Piece]:
    """What stream `stream` reads in round `round_`, in order (Q positions)."""
    start = round_ * layout.round_size + stream * layout.range_size
    return sequence_pieces(shard_sizes, layout.seed, start, layout.range_size)


def describe_assignment(shard_sizes: Sequence[int], layout: StreamLayout, round_: int) -> list[list[Piece]]:
    """Every stream's pieces in round `round_`, indexed by stream id."""
    return [stream_pieces(shard_sizes, layout, round_, s) for s in range(layout.num_streams)]


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
