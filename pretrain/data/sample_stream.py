"""One training stream: an endless sequence of decoded samples with a resumable position.

Stream s reads its range of round 0, then of round 1, ... (see streams.py). Each round's raw samples pass a
shuffle buffer seeded from (seed, round, s); the n-th raw sample drawn from it (its position) is decoded and
augmented with the global RNGs seeded from (seed, round, s, n). A round's range is whole micro-batches; a corrupt
sample is skipped and the next one takes its place, so the stream then runs ahead into its next round's range.

The state (round, position, good count) is exact: a new stream built from it replays the round's range
through the shuffle buffer without decoding, drops `pos` draws and continues exactly where the old one was.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .decode import CorruptSample, decode_sample
from .manifest import DataError
from .rng import seed_globals
from .shard_reader import read_pieces
from .streams import AUGMENT, SHUFFLE_BUFFER, StreamLayout, mix_seed, stream_pieces

log = logging.getLogger(__name__)

# A stream that finds no usable sample in this many rounds in a row raises instead of reading forever.
MAX_EMPTY_ROUNDS = 3


@dataclass
class StreamState:
    """Where a stream is. Counters cover all rounds; the other fields the current round."""

    round: int = 0
    pos: int = 0  # raw samples drawn from the shuffle buffer this round, corrupt ones included
    good: int = 0  # good samples delivered this round
    truncation_events: int = 0  # short shards met this round (so a replay does not count them twice)
    corrupt: int = 0  # corrupt samples skipped
    truncated: int = 0  # short or unreadable shards met

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> StreamState:
        return cls(**{k: int(v) for k, v in d.items()})


def shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Items in a random order that only looks `size` items ahead; deterministic given `rng`."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    while buf:
        i = rng.randrange(len(buf))
        buf[i], buf[-1] = buf[-1], buf[i]
        yield buf.pop()


class SampleStream:
    """Stream `stream_id` of `layout`, decoding with `transform`, starting at `state`; `selections` are a
    subset's kept in-shard indices (then `shard_sizes` count kept samples)."""

    def __init__(
        self,
        stream_id: int,
        layout: StreamLayout,
        urls: Sequence[str],
        shard_sizes: Sequence[int],
        *,
        num_classes: int,
        transform: Any,
        buffer_size: int,
        state: StreamState,
        selections: Sequence[Sequence[int]] | None = None,
    ):
        self.id = stream_id
        self.layout = layout
        self.urls = urls
        self.shard_sizes = shard_sizes
        self.selections = selections
        self.num_classes = num_classes
        self.transform = transform
        self.buffer_size = buffer_size
        self.state = state
        self._draws: Iterator[dict] | None = None
        self._counted_truncations = 0
        self._empty_rounds = 0

    def take(self, n: int) -> tuple[list[torch.Tensor], list[int], list[str]]:
        """The next n good samples (images, labels, keys)."""
        images: list[torch.Tensor] = []
        labels: list[int] = []
        keys: list[str] = []
        st = self.state
        while len(images) < n:
            if self._draws is None:
                self._open_round()
            raw = next(self._draws, None)
            if raw is None:
                self._end_round()
                continue
            position = st.pos
            st.pos += 1
            seed_globals(mix_seed(self.layout.seed, AUGMENT, st.round, self.id, position))
            try:
                image, label = decode_sample(raw, self.transform, self.num_classes)
            except CorruptSample as exc:
                st.corrupt += 1
                log.warning(
                    "skipping corrupt sample %s in %s: %s", raw.get("__key__"), raw.get("__url__"), exc
                )
            else:
                images.append(image)
                labels.append(label)
                keys.append(raw["__key__"])
                st.good += 1
            if st.pos == self.layout.range_size:  # every position of the round drawn
                self._end_round()
        return images, labels, keys

    def close(self) -> None:
        """Close the open shard, if any."""
        if self._draws is not None:
            self._draws.close()
            self._draws = None

    def _open_round(self) -> None:
        st = self.state
        pieces = stream_pieces(self.shard_sizes, self.layout, st.round, self.id)
        rng = random.Random(mix_seed(self.layout.seed, SHUFFLE_BUFFER, st.round, self.id))
        self._counted_truncations = st.truncation_events
        st.truncation_events = 0
        self._draws = shuffle_buffer(
            read_pieces(self.urls, pieces, self._on_truncated, self.selections), self.buffer_size, rng
        )
        for _ in range(st.pos):  # replay a resumed round without decoding
            next(self._draws, None)

    def _end_round(self) -> None:
        st = self.state
        self._empty_rounds = self._empty_rounds + 1 if st.good == 0 else 0
        if self._empty_rounds >= MAX_EMPTY_ROUNDS:
            raise DataError(
                f"stream {self.id} found no usable sample in {MAX_EMPTY_ROUNDS} rounds in a row "
                f"(last: round {st.round}, {self.layout.range_size} samples each): are the shards broken?"
            )
        self.close()
        st.round, st.pos, st.good, st.truncation_events = st.round + 1, 0, 0, 0

    def _on_truncated(self, url: str, reason: str) -> None:
        st = self.state
        st.truncation_events += 1
        if st.truncation_events > self._counted_truncations:
            st.truncated += 1
            log.warning("shard %s %s; stream %d goes on with its next samples", url, reason, self.id)
