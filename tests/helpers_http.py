"""Test helper: a real HTTP server on 127.0.0.1 serving a folder with Range requests, behind a fault injector."""

from __future__ import annotations

import os
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultyServer:
    """Serves the files of `root` at `url`; of the requests for `.tar` files, every `fail_every`-th is answered 503 and
    every `reset_every`-th response is cut by a connection reset (TCP RST) after `cut_bytes` bytes of its body;
    `broken` names files whose every response is reset. Counts what it did."""

    def __init__(self, root: str, *, fail_every: int = 0, reset_every: int = 0, cut_bytes: int = 4000,
                 broken: tuple[str, ...] = ()):
        self.root, self.fail_every, self.reset_every, self.cut_bytes = root, fail_every, reset_every, cut_bytes
        self.broken = broken
        self.counts = {"tar_requests": 0, "503": 0, "resets": 0, "ranges": 0}
        self.requests: dict[str, int] = {}  # per file name
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _fault(self, name: str) -> str | None:
        """None, '503' or 'reset' for the next request of `name`."""
        if not name.endswith(".tar"):
            return None
        with self._lock:
            self.requests[name] = self.requests.get(name, 0) + 1
            self.counts["tar_requests"] += 1
            n = self.counts["tar_requests"]
            if self.fail_every and n % self.fail_every == 0:
                self.counts["503"] += 1
                return "503"
            if name in self.broken or (self.reset_every and n % self.reset_every == 0):
                self.counts["resets"] += 1
                return "reset"
        return None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                path = os.path.join(server.root, name)
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                fault = server._fault(name)
                if fault == "503":
                    self.send_error(503, "try again")
                    return
                with open(path, "rb") as f:
                    data = f.read()
                start = 0
                ranged = self.headers.get("Range")
                if ranged:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    with server._lock:
                        server.counts["ranges"] += 1
                body = data[start:]
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Length", str(len(body)))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if fault == "reset" and len(body) > server.cut_bytes:
                    self.wfile.write(body[: server.cut_bytes])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()  # an RST: the client sees a reset mid-body
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def finish(self) -> None:
                try:
                    super().finish()
                except OSError:
                    pass

        return Handler
