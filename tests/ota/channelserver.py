"""A loopback HTTP server over a TUF repository directory: Range, a request log, faults.

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


@dataclass
class Server:
    root: Path
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    faults: dict[str, tuple[str, float]] = field(default_factory=dict)

    def clear(self) -> None:
        self.hits.clear()

    def body_bytes(self) -> int:
        return sum(h.sent for h in self.hits)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            fault = next((v for k, v in server.faults.items() if k in self.path), None)
            if fault is not None and fault[0] == "stall":
                time.sleep(fault[1])
                self.close_connection = True
                server.hits.append(Hit(self.path, status, 0))
                return
            if fault is not None and fault[0] == "truncate":
                body = body[: int(fault[1])]
                self.close_connection = True
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except OSError:
                pass
            server.hits.append(Hit(self.path, status, len(body)))

        def do_GET(self) -> None:
            fault = next((v for k, v in server.faults.items() if k in self.path), None)
            if fault is not None and fault[0] == "status":
                self._send(int(fault[1]), b"error\n", {})
                return
            path = server.root / self.path.split("?")[0].lstrip("/")
            if not path.resolve().is_relative_to(server.root.resolve()) or not path.is_file():
                self._send(404, b"not found\n", {})
                return
            data = path.read_bytes()
            rng = self.headers.get("Range")
            if rng:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                self._send(206, data[start : end + 1],
                           {"Content-Range": f"bytes {start}-{end}/{len(data)}"})  # fmt: skip
            else:
                self._send(200, data, {})

    return Handler


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
