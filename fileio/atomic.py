"""Atomic, durable file writes, and file hashing.

A file is written under a hidden temporary name beside the target (``.{name}….tmp``), flushed to disk, renamed
over the target, and then the folder is flushed too, so that the rename itself survives a power cut. A crash or
an error mid-write leaves the old file (or none) and never a half-written file under the real name; what an
interrupted write leaves behind matches :func:`is_temp_name`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TEMP_SUFFIX = ".tmp"


def temp_path(path: str | os.PathLike, tag: str = "") -> str:
    """The hidden temporary name ``.{name}{tag}.tmp`` beside ``path`` that it is written under before the rename."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}{tag}{_TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """True for a file name that :func:`temp_path` gives (the leftover of an interrupted write)."""
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike, durable: bool = True) -> None:
    """Rename the complete file ``tmp`` over ``path``; ``durable`` flushes ``tmp`` to disk before the rename and
    the folder after it, so that both the data and the rename survive a power cut."""
    if durable:
        fsync_path(tmp)
    os.replace(tmp, path)
    if durable:
        fsync_path(os.path.dirname(os.path.abspath(path)))


@contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path`` (its folder is created) to write the file under; it is
    committed over ``path`` (:func:`commit`) when the block succeeds and removed in any case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_path(path, f".{secrets.token_hex(4)}"))  # unique: concurrent writers never share it
    try:
        yield tmp
        commit(tmp, path, durable)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, the old file, or complete."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically (same object, same key order: same bytes)."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n", durable)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
