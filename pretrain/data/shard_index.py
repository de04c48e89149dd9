"""The trainer's view of the per-shard sample indices (``SHARD.tar.idx``, written by data_prep; data_prep/index.py).

`shard_index(shard)` loads a shard's index once per process and checks it against the manifest (bytes, sample count).
A local shard without one gets it built on first use (one read of the shard, written beside it when the folder is
writable), a `pipe:` shard (whose index has no URL) by streaming it once in each process; an http(s) shard without
one, or an index that does not fit the manifest, is a one-line error naming the command that builds it.
"""

from __future__ import annotations

import logging
import os
import tarfile
import urllib.error
from dataclasses import dataclass
from functools import lru_cache

from data_prep.errors import DataPrepError
from data_prep.index import NO_LABEL, IndexEntry, format_index, index_path, parse_index, scan_shard, scan_tar
from fileio.atomic import atomic_write_text

from .manifest import DataError, Shard, is_remote
from .remote import ShardFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardIndex:
    """Per sample of one shard, in shard order: byte offset and size of its members, label (NO_LABEL: none), key."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    labels: tuple[int, ...]
    keys: tuple[str, ...]

    @classmethod
    def of(cls, entries: list[IndexEntry]) -> ShardIndex:
        return cls(*(tuple(column) for column in zip(*((e.offset, e.size, e.label, e.key) for e in entries),
                                                      strict=True))) if entries else cls((), (), (), ())


def _command(shard: Shard) -> str:
    folder = os.path.dirname(shard.url) if not is_remote(shard.name) else "<folder of the shards>"
    return f"`python -m data_prep index {folder}`"


def _read_text(shard: Shard) -> str | None:
    path = index_path(shard.url)
    if shard.url.startswith("pipe:"):
        return None
    try:
        if not is_remote(shard.name):
            with open(path, encoding="utf-8") as f:
                return f.read()
        reader = ShardFile(path, remote=True)
        try:
            return reader.read_all().decode("utf-8")
        finally:
            reader.close()
    except FileNotFoundError:
        return None
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise DataError(f"cannot read the index {path} of shard {shard.url}: {exc}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if is_remote(shard.name):
            raise DataError(f"cannot read the index {path} of shard {shard.url} ({exc}): build it with "
                            f"{_command(shard)} and upload it beside the shard") from None
        raise DataError(f"cannot read the index {path}: {exc}") from None


def _stream_pipe(shard: Shard) -> list[IndexEntry]:
    log.info("indexing the pipe: shard %s (streamed once)", shard.url)
    stream = ShardFile(shard.url, remote=True, size=shard.bytes).stream()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return scan_tar(tar)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"cannot index shard {shard.url}: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}"
                        ) from None
    finally:
        stream.close()


def _build_local(shard: Shard) -> list[IndexEntry]:
    log.warning("shard %s has no index %s: building it (one read of the shard); `python -m data_prep index` "
                "builds them ahead", shard.url, index_path(shard.url))
    try:
        entries = scan_shard(shard.url)
    except DataPrepError as exc:
        raise DataError(str(exc)) from None
    try:
        atomic_write_text(index_path(shard.url), format_index(entries, os.path.getsize(shard.url)))
    except OSError as exc:  # a read-only folder: the index lives in this process only
        log.warning("cannot write %s: %s", index_path(shard.url), exc)
    return entries


@lru_cache(maxsize=64)  # a stream needs a few shards at a time; an index is ~100 bytes per sample
def shard_index(shard: Shard) -> ShardIndex:
    """The index of `shard`, checked against its manifest entry (cached per process)."""
    text = _read_text(shard)
    if text is None and shard.url.startswith("pipe:"):
        entries, size = _stream_pipe(shard), shard.bytes
    elif text is None and is_remote(shard.name):
        raise DataError(f"shard {shard.url} has no index {index_path(shard.url)}: build it with {_command(shard)} "
                        f"and upload it beside the shard")
    elif text is None:
        entries, size = _build_local(shard), shard.bytes
    else:
        try:
            size, entries = parse_index(text, index_path(shard.url))
        except ValueError as exc:
            raise DataError(f"{exc}: rebuild it with {_command(shard)}") from None
    if size != shard.bytes or len(entries) != shard.num_samples:
        raise DataError(
            f"shard {shard.url}: its index lists {len(entries)} samples in {size} bytes, the manifest "
            f"{shard.num_samples} in {shard.bytes}: check the shards with `python -m data_prep verify` and rebuild "
            f"the index with {_command(shard)}"
        )
    return ShardIndex.of(entries)


def usable_label(label: int, num_classes: int) -> int:
    """`label` if it names a class, else NO_LABEL."""
    return label if 0 <= label < num_classes else NO_LABEL
