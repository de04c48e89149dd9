"""Writing one tar shard: atomic, byte-reproducible, with its size known before each sample is added.

Members carry fixed metadata (mtime 0, uid/gid 0, mode 0444, user/group 'data_prep'), ustar format, names
``{key}.{ext}`` in sorted extension order: the layout webdataset's readers expect (``__key__`` + extensions).
The stdlib ``tarfile`` is used rather than ``webdataset.TarWriter`` because it gives the same output without
importing torch in every worker, and lets :func:`shard_bytes` predict the file size exactly.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass

from data_prep.atomic import temp_path

BLOCK = tarfile.BLOCKSIZE  # 512: header size and data padding unit
RECORD = tarfile.RECORDSIZE  # 10240: a stream-mode tar file is padded to a multiple of this
MTIME = 0
OWNER = "data_prep"


def sample_bytes(members: dict[str, bytes]) -> int:
    """Bytes a sample adds to a tar file: one header block per member plus its data padded to 512."""
    return sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for data in members.values())


def shard_bytes(payload: int) -> int:
    """Size of a tar file whose members take ``payload`` bytes (with end-of-archive and record padding)."""
    return -(-(payload + 2 * BLOCK) // RECORD) * RECORD


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: samples, bytes and sha256 of the file."""

    num_samples: int
    bytes: int
    sha256: str


class _HashingFile:
    """A write-only file wrapper that hashes and counts what passes through."""

    def __init__(self, f: io.BufferedWriter):
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


class ShardWriter:
    """Writes ``path`` under a temporary name and renames it on :meth:`close`; :meth:`abort` removes it."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = temp_path(path)
        self._file = open(self.tmp, "wb")
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w|", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0
        self.payload = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Append one sample: ``members`` maps extension -> bytes (e.g. {'jpg': ..., 'cls': b'3'})."""
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = MTIME
            info.mode = 0o444
            info.uname = info.gname = OWNER
            self._tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1
        self.payload += sample_bytes(members)

    def close(self) -> ShardInfo:
        """Finish the tar, flush it to disk and rename it into place."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        return ShardInfo(self.num_samples, self._hashing.size, self._hashing.sha.hexdigest())

    def abort(self) -> None:
        """Drop the unfinished shard."""
        self._file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
