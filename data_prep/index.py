"""The per-shard sample index ``SHARD.tar.idx``: where each sample's bytes are, its key and its label.

A reader seeks to any sample without reading the ones before it (a resumed training stream fetches its shuffle
buffer by offset), and a subset is chosen from the labels without opening the shards. Like DALI's ``wds2idx``
index, plus keys and labels. Text, one line per sample in shard order after a header line::

    #mixer-shard-index 1 bytes=<shard bytes> samples=<count>
    <offset> <size> <label> <key>

``offset`` is the first header block of the sample's first member (extended headers included), ``size`` runs to the
end of its last member's padded data, so ``shard[offset:offset + size]`` is a small tar of that sample alone.
``label`` is the integer in the sample's ``cls`` member, -1 without a usable one. Samples are grouped as
webdataset's ``group_by_keys`` groups them (a new sample starts when the key changes; ``__...__`` names skipped).
``python -m data_prep index SHARDS`` writes it for shards made elsewhere; ``build`` writes it for its own shards;
``verify`` checks it.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass

from data_prep.errors import DataPrepError
from fileio.atomic import atomic_write_text

INDEX_SUFFIX = ".idx"
MAGIC = "#mixer-shard-index"
VERSION = 1
NO_LABEL = -1
_META = re.compile(r"__[^/]*__($|/)")  # member names webdataset's tar iterator skips
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_HEADER = re.compile(rf"^{MAGIC} (\d+) bytes=(\d+) samples=(\d+)$")


@dataclass(frozen=True)
class IndexEntry:
    """One sample: bytes [offset, offset + size) of the shard, its key and label (NO_LABEL: none usable)."""

    offset: int
    size: int
    label: int
    key: str


def index_path(shard: str) -> str:
    """Where the index of the shard at ``shard`` (a path or URL) lives: beside it, ``.idx`` appended."""
    return shard + INDEX_SUFFIX


def is_meta(name: str) -> bool:
    """Whether webdataset's tar iterator skips a member of this name (``__key__``-style metadata)."""
    return _META.match(name) is not None


def split_name(name: str) -> tuple[str | None, str]:
    """(key, extension) of a member name as webdataset splits it; key None for names it skips."""
    match = _KEY.match(name)
    return (match.group(1), match.group(2)) if match else (None, "")


def _label(data: bytes) -> int:
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else NO_LABEL


def scan_tar(tar: tarfile.TarFile) -> list[IndexEntry]:
    """The index entries of a tar opened for random access (member data is seeked over; ``cls`` is read)."""
    entries: list[IndexEntry] = []
    start = end = 0
    key: str | None = None
    label = NO_LABEL
    for info in tar:
        if not info.isreg() or is_meta(info.name):
            continue
        member_key, ext = split_name(info.name)
        if member_key is None:
            continue
        if member_key != key:
            if key is not None:
                entries.append(IndexEntry(start, end - start, label, key))
            key, start, label = member_key, info.offset, NO_LABEL
        end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if ext.lower() == "cls":
            label = _label(tar.extractfile(info).read())
    if key is not None:
        entries.append(IndexEntry(start, end - start, label, key))
    return entries


def scan_shard(path: str) -> list[IndexEntry]:
    """The index entries of the local shard at ``path``; DataPrepError (one line) if it is not a readable tar."""
    try:
        with tarfile.open(path) as tar:
            return scan_tar(tar)
    except (tarfile.TarError, OSError, EOFError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataPrepError(f"cannot index {path}: {first}") from None


def format_index(entries: list[IndexEntry], shard_bytes: int) -> str:
    """The index file's text."""
    lines = [f"{MAGIC} {VERSION} bytes={shard_bytes} samples={len(entries)}"]
    lines += [f"{e.offset} {e.size} {e.label} {e.key}" for e in entries]
    return "\n".join(lines) + "\n"


def parse_index(text: str, where: str) -> tuple[int, list[IndexEntry]]:
    """(shard bytes, entries) of an index's text; ValueError (one line naming ``where``) if malformed."""
    lines = text.splitlines()
    header = _HEADER.match(lines[0]) if lines else None
    if header is None or int(header.group(1)) != VERSION:
        raise ValueError(f"{where} is not a shard index of version {VERSION}")
    entries = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split(" ", 3)
        try:
            entries.append(IndexEntry(int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
        except (ValueError, IndexError):
            raise ValueError(f"{where} line {n} is not '<offset> <size> <label> <key>'") from None
    if len(entries) != int(header.group(3)):
        raise ValueError(f"{where} lists {len(entries)} samples but its header says {header.group(3)}")
    return int(header.group(2)), entries


def write_index(path: str) -> list[IndexEntry]:
    """Scan the local shard at ``path`` and write ``path.idx`` atomically; returns the entries."""
    entries = scan_shard(path)
    atomic_write_text(index_path(path), format_index(entries, os.path.getsize(path)))
    return entries
