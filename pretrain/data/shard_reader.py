"""Raw samples out of tar shards with webdataset's building blocks: open (gopen), iterate, group by key.

A piece (shard, start, count) is read by skipping `start` samples without extracting their bytes and then
grouping the next `count` samples. A shard that ends early (truncated tar, unreadable stream) is reported
to a callback and reading goes on with the next piece: never an exception, never a hang.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator, Sequence

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from .streams import Piece

log = logging.getLogger(__name__)

RawSample = dict  # {"__key__": str, "__url__": str, "<ext>": bytes, ...}
OnTruncated = Callable[[str, str], None]  # (url, reason)

# What a broken or short tar stream raises while being read.
READ_ERRORS = (tarfile.TarError, EOFError, OSError, ValueError)


class _SkipFirstKeys:
    """A select_files predicate for webdataset's tar iterator that drops the files of the first n samples,
    counting samples the way group_by_keys does (a new sample starts when the key changes)."""

    def __init__(self, n: int):
        self.remaining = n
        self.current: str | None = None

    def __call__(self, fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is None:
            return False
        if key != self.current:
            self.current = key
            self.remaining -= 1
        return self.remaining < 0


def read_piece(url: str, start: int, count: int, on_truncated: OnTruncated) -> Iterator[RawSample]:
    """Samples [start, start + count) of the shard at `url`, raw (bytes per extension)."""
    stream = None
    got = 0
    try:
        stream = gopen(url)
        files = tar_file_expander(
            [{"url": url, "stream": stream}], select_files=_SkipFirstKeys(start) if start else None
        )
        for sample in group_by_keys(files):
            yield sample
            got += 1
            if got == count:
                return
        reason = f"ended after {start + got} of its samples (expected at least {start + count})"
    except READ_ERRORS as exc:
        first = str(exc.args[0]) if exc.args else type(exc).__name__
        first = first.split(" @ ")[0].splitlines()[0][:200]  # webdataset appends " @ <stream>"
        reason = f"unreadable after {start + got} of its samples: {first}"
    finally:
        if stream is not None:
            _close_quietly(stream)
    on_truncated(url, reason)


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except READ_ERRORS as exc:  # a pipe: command closed early may exit non-zero
        log.debug("closing shard stream: %s", exc)


def read_pieces(
    urls: Sequence[str], pieces: Sequence[Piece], on_truncated: OnTruncated
) -> Iterator[RawSample]:
    """The raw samples of `pieces` in order; `urls[i]` is shard i's URL."""
    for piece in pieces:
        yield from read_piece(urls[piece.shard], piece.start, piece.count, on_truncated)
