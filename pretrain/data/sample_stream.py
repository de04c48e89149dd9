"""One training stream: an endless sequence of decoded samples with a resumable position.

Stream s reads its range of round 0, then of round 1, ... (see streams.py). Each round's Q positions pass a
shuffle buffer seeded from (seed, round, s); the n-th raw sample drawn from it (its position) is decoded and
augmented with the global RNGs seeded from (seed, round, s, n). A round's range is whole micro-batches; a corrupt
sample is skipped and the next one takes its place, so the stream then runs ahead into its next round's range.

The shuffle buffer runs on range indices (`IndexShuffle`); the bytes behind them come from `RangeReader` by offset.
The state (round, position, good count) is exact and cheap to resume: a new stream replays `pos` draws on indices
(no bytes read) and reads on from where the buffer's input stopped; a sample that was in the buffer at the save is
fetched by offset when it is drawn. Before its first step a resumed stream reads about two samples per draw, and
over the round each sample once, as the uninterrupted stream does.
A sample that cannot be read (a short shard) is drawn as `Missing` and skipped; the first of each run counts one
short shard, at its draw, so the counters of a resumed stream equal the uninterrupted one's.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .decode import CorruptSample, decode_sample
from .manifest import DataError, Shard
from .offset_reader import Missing, RangeReader
from .rng import seed_globals
from .shard_reader import RawSample
from .streams import AUGMENT, SHUFFLE_BUFFER, StreamLayout, mix_seed, stream_pieces

log = logging.getLogger(__name__)

# A stream that finds no usable sample in this many rounds in a row raises instead of reading forever.
MAX_EMPTY_ROUNDS = 3


@dataclass
class StreamState:
    """Where a stream is. Counters cover all rounds; the other fields the current round."""

    round: int = 0
    pos: int = 0  # samples drawn from the shuffle buffer this round, corrupt and missing ones included
    good: int = 0  # good samples delivered this round
    corrupt: int = 0  # corrupt samples skipped
    truncated: int = 0  # short or unreadable shards met (runs of missing samples)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> StreamState:
        return cls(**{k: int(v) for k, v in d.items()})


class IndexShuffle:
    """The indices 0..n-1 in the order a shuffle buffer of `size` items yields them, one draw at a time.

    The buffer is filled with the first `size` indices; each draw then takes a random slot and puts the next
    index in its place; once the input is exhausted, random slots are drawn until the buffer is empty. `buffer`
    (the indices held) and `next_in` (the next index to enter) are the whole state besides the RNG.
    """

    def __init__(self, n: int, size: int, rng: random.Random):
        self.n, self.size, self.rng = n, max(size, 1), rng
        self.buffer: list[int] = []
        self.next_in = 0

    def draw(self) -> int:
        """The next index; n draws yield each index once."""
        if self.size == 1:
            self.next_in += 1
            return self.next_in - 1
        while len(self.buffer) < self.size and self.next_in < self.n:
            self.buffer.append(self.next_in)
            self.next_in += 1
        if self.next_in < self.n:
            i = self.rng.randrange(self.size)
            out, self.buffer[i] = self.buffer[i], self.next_in
            self.next_in += 1
            return out
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()


class SampleStream:
    """Stream `stream_id` of `layout`, decoding with `transform`, starting at `state`; `selections` are a
    subset's kept in-shard indices (then `shard_sizes` count kept samples)."""

    def __init__(
        self,
        stream_id: int,
        layout: StreamLayout,
        shards: Sequence[Shard],
        shard_sizes: Sequence[int],
        *,
        num_classes: int,
        transform: Any,
        state: StreamState,
        selections: Sequence[Sequence[int]] | None = None,
    ):
        self.id = stream_id
        self.layout = layout
        self.shards = shards
        self.shard_sizes = shard_sizes
        self.selections = selections
        self.num_classes = num_classes
        self.transform = transform
        self.state = state
        self._shuffle: IndexShuffle | None = None
        self._reader: RangeReader | None = None
        self._input: Iterator[RawSample | Missing] | None = None
        self._held: dict[int, RawSample | Missing] = {}  # the samples of the indices in the buffer
        self._unread: set[int] = set()  # indices in the buffer at a resume, fetched by offset when drawn
        self._read_to = 0  # indices below this were read from `_input`
        self._empty_rounds = 0

    def take(self, n: int) -> tuple[list[torch.Tensor], list[int], list[str]]:
        """The next n good samples (images, labels, keys)."""
        images: list[torch.Tensor] = []
        labels: list[int] = []
        keys: list[str] = []
        st = self.state
        while len(images) < n:
            if self._shuffle is None:
                self._open_round()
            raw = self._draw()
            position = st.pos
            st.pos += 1
            if isinstance(raw, Missing):
                if raw.first:
                    st.truncated += 1
                    log.warning("stream %d: a short shard: %s; it goes on with its next samples", self.id, raw.reason)
            else:
                seed_globals(mix_seed(self.layout.seed, AUGMENT, st.round, self.id, position))
                try:
                    image, label = decode_sample(raw, self.transform, self.num_classes)
                except CorruptSample as exc:
                    st.corrupt += 1
                    log.warning("skipping corrupt sample %s in %s: %s", raw["__key__"], raw["__url__"], exc)
                else:
                    images.append(image)
                    labels.append(label)
                    keys.append(raw["__key__"])
                    st.good += 1
            if st.pos == self.layout.range_size:  # every position of the round drawn
                self._end_round()
        return images, labels, keys

    def close(self) -> None:
        """Close the open shard, if any, and drop the buffer."""
        if self._input is not None:
            self._input.close()
        self._shuffle = self._reader = self._input = None
        self._held, self._unread = {}, set()

    def _open_round(self) -> None:
        st = self.state
        pieces = stream_pieces(self.shard_sizes, self.layout, st.round, self.id)
        rng = random.Random(mix_seed(self.layout.seed, SHUFFLE_BUFFER, st.round, self.id))
        self._shuffle = IndexShuffle(self.layout.range_size, self.layout.shuffle_buffer, rng)
        self._reader = RangeReader(self.shards, pieces, self.selections)
        for _ in range(st.pos):  # a resumed round: replay the draws on indices, no bytes read
            self._shuffle.draw()
        self._unread = set(self._shuffle.buffer)
        self._read_to = self._shuffle.next_in
        self._input = self._reader.sequential(self._read_to)

    def _draw(self) -> RawSample | Missing:
        i = self._shuffle.draw()
        while self._read_to < self._shuffle.next_in:  # the indices that entered the buffer
            self._held[self._read_to] = next(self._input)
            self._read_to += 1
        if i in self._unread:
            self._unread.remove(i)
            return self._reader.fetch(i)
        return self._held.pop(i)

    def _end_round(self) -> None:
        st = self.state
        self._empty_rounds = self._empty_rounds + 1 if st.good == 0 else 0
        if self._empty_rounds >= MAX_EMPTY_ROUNDS:
            raise DataError(
                f"stream {self.id} found no usable sample in {MAX_EMPTY_ROUNDS} rounds in a row "
                f"(last: round {st.round}, {self.layout.range_size} samples each): are the shards broken?"
            )
        self.close()
        st.round, st.pos, st.good = st.round + 1, 0, 0
