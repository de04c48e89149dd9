"""Atomic file writes (temporary name in the same folder, then os.replace) and file hashing."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def temp_path(path: str) -> str:
    """The hidden temporary name that ``path`` is written under before it is renamed into place."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp")


def write_bytes_atomic(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, the old file, or complete.

    ``durable`` also flushes the data to disk before the rename, so that it survives a power cut.
    """
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any, durable: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically (same object, same key order: same bytes)."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"), durable)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
