"""Raw samples out of tar shards with webdataset's building blocks: open (gopen), iterate, group by key.

A piece (shard, start, count) means samples [start, start + count) of the shard; of a subsetted shard
(a manifest with selections), its kept samples [start, start + count), i.e. the in-shard indices
selection[start:start + count]. Every other sample is skipped without extracting its bytes; the wanted ones
are grouped and returned. A shard that ends early (truncated tar, unreadable stream) is reported to a
callback and reading goes on with the next piece: never an exception, never a hang. The report names the
in-shard index of the first wanted sample it could not deliver ("unreadable after 5 of its samples").
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


class _KeepIndices:
    """A select_files predicate for webdataset's tar iterator that drops the files of the samples before `last`
    whose in-shard index is not in `wanted`, counting samples the way group_by_keys does (a new one starts when
    the key changes). Files after `last` pass: group_by_keys yields the last wanted sample when the next
    sample's first file arrives, and reading stops there."""

    def __init__(self, wanted: range | frozenset[int], last: int):
        self.wanted = wanted
        self.last = last
        self.index = -1
        self.current: str | None = None

    def __call__(self, fname: str) -> bool:
        key, _ = base_plus_ext(fname)
        if key is None:
            return False
        if key != self.current:
            self.current = key
            self.index += 1
        return self.index > self.last or self.index in self.wanted


def read_piece(
    url: str,
    start: int,
    count: int,
    on_truncated: OnTruncated,
    selection: Sequence[int] | None = None,
) -> Iterator[RawSample]:
    """Samples [start, start + count) of the shard at `url`, raw (bytes per extension); with `selection`
    (the shard's sorted kept indices), the samples at in-shard indices selection[start:start + count]."""
    indices = range(start, start + count) if selection is None else selection[start : start + count]
    if not indices:
        return
    select = _KeepIndices(indices if isinstance(indices, range) else frozenset(indices), indices[-1])
    stream = None
    got = 0
    try:
        stream = gopen(url)
        files = tar_file_expander([{"url": url, "stream": stream}], select_files=select)
        for sample in group_by_keys(files):
            yield sample
            got += 1
            if got == len(indices):
                return
        reason = f"ended after {indices[got]} of its samples (expected at least {indices[-1] + 1})"
    except READ_ERRORS as exc:
        first = str(exc.args[0]) if exc.args else type(exc).__name__
        first = first.split(" @ ")[0].splitlines()[0][:200]  # webdataset appends " @ <stream>"
        reason = f"unreadable after {indices[got]} of its samples: {first}"
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
    urls: Sequence[str],
    pieces: Sequence[Piece],
    on_truncated: OnTruncated,
    selections: Sequence[Sequence[int]] | None = None,
) -> Iterator[RawSample]:
    """The raw samples of `pieces` in order; `urls[i]` is shard i's URL, `selections[i]` its kept indices
    (None: every sample)."""
    for p in pieces:
        selection = None if selections is None else selections[p.shard]
        yield from read_piece(urls[p.shard], p.start, p.count, on_truncated, selection)
