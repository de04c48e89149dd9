"""The raw samples of one stream's round range, fetched by byte offset from the shard indices (shard_index.py).

Range index i (0 <= i < Q) is the i-th position of the stream's pieces (streams.py); the index maps it to bytes
[offset, offset + size) of a shard, a small tar of that sample alone. `sequential(start)` reads positions start, start
+ 1, ... with one open file per piece (seeking over samples a subset does not keep), `fetch(i)` reads one sample; a
resumed stream reads on from where the buffer's input stopped and fetches each sample that was in the buffer when
it is drawn, so it never reads the epoch before them.

A sample whose bytes cannot be read whole or parsed is `Missing`: a pure function of the shard's bytes and its index,
so an uninterrupted run and a resumed one see the same ones. Its `first` flag marks the first of a run of missing
samples in a piece (one short shard met), found by looking at the sample before it.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from data_prep.index import is_meta, split_name

from .manifest import Shard, is_remote
from .remote import RETRYABLE, ShardFile
from .shard_index import ShardIndex, shard_index
from .shard_reader import READ_ERRORS, RawSample
from .streams import Piece


class _Failure(NamedTuple):
    """Why a sample could not be read; `io`: the shard could not be read there (after the retries of remote.py)."""

    reason: str
    io: bool = False


class Missing(NamedTuple):
    """A sample that could not be read; `first`: the first missing one of its run in its piece."""

    first: bool
    reason: str


def parse_sample(data: bytes, url: str) -> RawSample:
    """{"__key__", "__url__", ext: bytes, ...} of the bytes of one sample's tar members (as webdataset groups them)."""
    sample: RawSample = {"__url__": url}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            key, ext = split_name(info.name) if info.isreg() and not is_meta(info.name) else (None, "")
            if key is None:
                continue
            if sample.setdefault("__key__", key) != key:
                raise ValueError(f"holds two samples ({sample['__key__']}, {key}): the index is stale")
            sample[ext.lower()] = tar.extractfile(info).read()
    if "__key__" not in sample:
        raise ValueError("holds no sample member: the index is stale")
    return sample


class RangeReader:
    """The samples of `pieces` (one stream's round) by range index."""

    def __init__(
        self,
        shards: Sequence[Shard],
        pieces: Sequence[Piece],
        selections: Sequence[Sequence[int]] | None = None,
        index_of: Callable[[Shard], ShardIndex] = shard_index,
    ):
        self.shards, self.pieces, self.selections, self.index_of = shards, pieces, selections, index_of
        self.starts: list[int] = []
        total = 0
        for p in pieces:
            self.starts.append(total)
            total += p.count
        self.size = total

    def _locate(self, i: int) -> tuple[int, int]:
        """(piece number, in-shard sample index) of range index i."""
        lo, hi = 0, len(self.pieces) - 1
        while lo < hi:  # the last piece starting at or before i
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.starts[mid] <= i else (lo, mid - 1)
        p = self.pieces[lo]
        k = p.start + i - self.starts[lo]
        return lo, (k if self.selections is None else self.selections[p.shard][k])

    def _file(self, piece: int) -> ShardFile:
        shard = self.shards[self.pieces[piece].shard]
        return ShardFile(shard.url, is_remote(shard.name), shard.bytes)

    def _read(self, cursor: ShardFile, i: int) -> RawSample | _Failure:
        """Sample i, or why it cannot be read."""
        n, k = self._locate(i)
        shard = self.shards[self.pieces[n].shard]
        index = self.index_of(shard)
        offset, size = index.offsets[k], index.sizes[k]
        try:
            data = cursor.read(offset, size)
        except RETRYABLE as exc:
            return _Failure(f"{shard.url} unreadable at sample {k}: {_first_line(exc)}", io=True)
        if len(data) < size:
            return _Failure(f"{shard.url} ended before sample {k} (at byte {offset + len(data)} of {offset + size})")
        try:
            return parse_sample(data, shard.url)
        except (*READ_ERRORS, KeyError) as exc:
            return _Failure(f"{shard.url}: sample {k} is not a tar sample: {_first_line(exc)}")

    def _first_of_run(self, i: int) -> bool:
        """Whether a missing sample i is the first missing one of its piece's run (sample i - 1 was readable)."""
        n, _ = self._locate(i)
        if i == self.starts[n]:
            return True
        cursor = self._file(n)
        try:
            return isinstance(self._read(cursor, i - 1), dict)
        finally:
            cursor.close()

    def fetch(self, i: int) -> RawSample | Missing:
        """Sample i alone (one open, one seek)."""
        n, _ = self._locate(i)
        cursor = self._file(n)
        try:
            got = self._read(cursor, i)
        finally:
            cursor.close()
        return got if isinstance(got, dict) else Missing(self._first_of_run(i), got.reason)

    def sequential(self, start: int) -> Iterator[RawSample | Missing]:
        """Samples start, start + 1, ..., with one open shard per piece. Once a piece's shard cannot be read (its
        retries spent), the rest of the piece is missing without further requests."""
        cursor: ShardFile | None = None
        piece = -1
        readable: bool | None = True  # was the previous sample of this piece read? None: unknown
        dead: _Failure | None = None  # why the rest of this piece cannot be read
        try:
            for i in range(start, self.size):
                n, _ = self._locate(i)
                if n != piece:
                    if cursor is not None:
                        cursor.close()
                    cursor, piece, dead = self._file(n), n, None
                    readable = i == self.starts[n] or None  # None: resumed inside the piece
                got = dead or self._read(cursor, i)
                if isinstance(got, dict):
                    readable = True
                    yield got
                    continue
                first = self._first_of_run(i) if readable is None else readable
                readable, dead = False, got if got.io else None
                yield Missing(first, got.reason)
        finally:
            if cursor is not None:
                cursor.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).split(" @ ")[0].strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
