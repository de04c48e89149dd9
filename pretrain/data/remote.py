"""Reading a shard's bytes at an offset, from a local path, an http(s) URL or a `pipe:` command, with retries.

`ShardFile(url, remote).read(offset, size)` returns bytes [offset, offset + size) of the shard (fewer only where the
shard really ends). A failed read of a remote shard (connection reset, a truncated response, a 5xx answer, a pipe
command that dies) is retried up to RETRIES times with exponential backoff, resuming at the byte it reached: an
http(s) shard with a `Range: bytes=<offset>-` request, a `pipe:` shard by running the command again and discarding
the bytes before the offset. Bytes are never duplicated or skipped by a retry: what was read is kept and the next
request starts after it. After the last retry the error is raised (the caller counts the shard as short). A 4xx
answer and a local file's error are not retried."""

from __future__ import annotations

import http.client
import logging
import time
import urllib.error
import urllib.request
from typing import BinaryIO

from webdataset.gopen import gopen

log = logging.getLogger(__name__)

RETRIES = 6  # attempts after the first
BACKOFF_S = 0.5  # the first retry's wait; doubled each time
TIMEOUT_S = 60.0  # per HTTP connection and read
_SKIP_CHUNK = 1 << 20

# What a failing read raises: OSError covers sockets, urllib's URLError/HTTPError and a pipe's exit status.
RETRYABLE = (OSError, http.client.HTTPException, EOFError)


def is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class _HttpRange:
    """The body of `url` from byte `offset` on (a Range request); a body that ends early raises."""

    def __init__(self, url: str, offset: int):
        request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
        self.response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (shard URLs are the user's)
        if offset and self.response.status != 206:
            self.response.close()
            raise OSError(f"{url} ignored the Range request (status {self.response.status})")
        length = self.response.headers.get("Content-Length")
        self.remaining = int(length) if length is not None else None

    def read(self, n: int) -> bytes:
        data = self.response.read(n)
        if self.remaining is not None:
            self.remaining -= len(data)
            if not data and n and self.remaining > 0:
                raise ConnectionResetError(f"the response ended {self.remaining} bytes early")
        return data

    def close(self) -> None:
        self.response.close()


class ShardFile:
    """One shard, read at any offset; a remote one forward from an open connection or a new one. `size` (the
    manifest's bytes): a remote stream that ends before it has failed (a pipe whose command died, say) and is
    retried; without it an early end is the shard's end."""

    def __init__(self, url: str, remote: bool, size: int | None = None):
        self.url, self.remote, self.size = url, remote, size
        self.file: BinaryIO | _HttpRange | None = None
        self.pos = 0

    def _open(self, offset: int) -> None:
        self.close()
        if is_http(self.url):
            self.file, self.pos = _HttpRange(self.url, offset), offset
            return
        self.file, self.pos = (gopen(self.url) if self.remote else open(self.url, "rb")), 0  # noqa: SIM115
        self._move(offset)

    def _move(self, offset: int) -> None:
        if not self.remote:
            self.file.seek(offset)
            self.pos = offset
            return
        while self.pos < offset:  # a stream: read and discard
            chunk = self.file.read(min(_SKIP_CHUNK, offset - self.pos))
            if not chunk:
                return
            self.pos += len(chunk)

    def _read_once(self, offset: int, size: int, parts: list[bytes]) -> None:
        """Append bytes [offset + what parts hold, offset + size) to `parts`, stopping at the shard's end."""
        start = offset + sum(map(len, parts))
        if self.file is None or start < self.pos or (is_http(self.url) and start > self.pos + _SKIP_CHUNK):
            self._open(start)
        elif start != self.pos:
            self._move(start)
        while sum(map(len, parts)) < size:
            chunk = self.file.read(size - sum(map(len, parts)))
            if not chunk:
                if self.remote and self.size is not None and self.pos < self.size:
                    raise ConnectionResetError(f"the stream ended at byte {self.pos} of {self.size}")
                return
            parts.append(chunk)
            self.pos += len(chunk)

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of the shard, retried with backoff from the byte reached."""
        parts: list[bytes] = []
        attempt = 0
        while True:
            try:
                self._read_once(offset, size, parts)
                return b"".join(parts)
            except RETRYABLE as exc:
                self.close()
                final = isinstance(exc, urllib.error.HTTPError) and exc.code < 500
                if not self.remote or final or attempt == RETRIES:
                    raise
                log.warning("reading %s at byte %d failed (%s); retry %d of %d", self.url,
                            offset + sum(map(len, parts)), exc, attempt + 1, RETRIES)
                time.sleep(BACKOFF_S * 2**attempt)
                attempt += 1

    def read_all(self) -> bytes:
        """The whole shard (a small file such as an index), with the same retries."""
        parts: list[bytes] = []
        while True:
            chunk = self.read(sum(map(len, parts)), _SKIP_CHUNK)
            parts.append(chunk)
            if len(chunk) < _SKIP_CHUNK:
                return b"".join(parts)

    def stream(self) -> _Forward:
        """The shard from byte 0 as a forward-only binary file (for tarfile's stream mode), with these retries."""
        return _Forward(self)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except RETRYABLE as exc:  # a pipe: command closed early may exit non-zero
                log.debug("closing %s: %s", self.url, exc)
            self.file = None


class _Forward:
    """A ShardFile read forward from byte 0 as a file object."""

    def __init__(self, shard: ShardFile):
        self.shard, self.pos = shard, 0

    def read(self, n: int = -1) -> bytes:
        data = self.shard.read(self.pos, n if n >= 0 else _SKIP_CHUNK)
        self.pos += len(data)
        return data

    def close(self) -> None:
        self.shard.close()
