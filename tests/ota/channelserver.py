"""A loopback HTTP server over a TUF repository directory: Range, a request log, faults.

Bodies are streamed from the file in 64 KiB blocks (a full bundle is hundreds of MB), and
``Server.streaming`` counts the bytes handed to the socket per path while a request runs, so a
test can act in the middle of a download (e.g. cut a VM's power).

Faults apply to request paths containing a key of ``Server.faults``: ``("status", 404)``
answers that status, ``("truncate", n)`` sends ``n`` bytes of the body then closes,
``("stall", s)`` sends the headers then nothing for ``s`` seconds.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Hit:
    path: str
    status: int
    sent: int
    start: int = 0  # first byte of the body (Range)
    at: float = 0.0  # time.time() when the answer was complete
    began: float = 0.0  # time.time() when the answer started


@dataclass
class Server:
    root: Path
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    faults: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: request path -> body bytes written so far, over every request for it (live)
    streaming: dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.hits.clear()

    def body_bytes(self) -> int:
        return sum(h.sent for h in self.hits)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(
            self, status: int, body: bytes | tuple[Path, int, int], headers: dict[str, str]
        ) -> None:
            """Answer with ``body``: bytes, or (file, start, length) streamed from the file."""
            began = time.time()
            length = len(body) if isinstance(body, bytes) else body[2]
            start = 0 if isinstance(body, bytes) else body[1]
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            fault = next((v for k, v in server.faults.items() if k in self.path), None)
            if fault is not None and fault[0] == "stall":
                time.sleep(fault[1])
                self.close_connection = True
                server.hits.append(Hit(self.path, status, 0, start, time.time(), began))
                return
            if fault is not None and fault[0] == "truncate":
                length = min(length, int(fault[1]))
                self.close_connection = True
            sent = 0
            try:
                for block in _blocks(body, length):
                    self.wfile.write(block)
                    sent += len(block)
                    server.streaming[self.path] = server.streaming.get(self.path, 0) + len(block)
                self.wfile.flush()
            except OSError:
                self.close_connection = True
            server.hits.append(Hit(self.path, status, sent, start, time.time(), began))

        def do_GET(self) -> None:
            fault = next((v for k, v in server.faults.items() if k in self.path), None)
            if fault is not None and fault[0] == "status":
                self._send(int(fault[1]), b"error\n", {})
                return
            path = server.root / self.path.split("?")[0].lstrip("/")
            if not path.resolve().is_relative_to(server.root.resolve()) or not path.is_file():
                self._send(404, b"not found\n", {})
                return
            size = path.stat().st_size
            rng = self.headers.get("Range")
            if rng:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
                self._send(206, (path, start, end + 1 - start),
                           {"Content-Range": f"bytes {start}-{end}/{size}"})  # fmt: skip
            else:
                self._send(200, (path, 0, size), {})

    return Handler


def _blocks(body: bytes | tuple[Path, int, int], length: int) -> Iterator[bytes]:
    if isinstance(body, bytes):
        yield body[:length]
        return
    path, start, _ = body
    with path.open("rb") as f:
        f.seek(start)
        while length > 0:
            block = f.read(min(length, 1 << 16))
            if not block:
                return
            length -= len(block)
            yield block


@contextmanager
def serve(root: Path) -> Iterator[Server]:
    """Serve ``root`` at ``Server.url`` while the context is open."""
    state = Server(root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
