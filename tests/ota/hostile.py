"""A hostile update mirror on loopback (http.server): lying tar heads, swapped files, Range.

Shared by tests/ota/test_fetch_hostile.py and tools/bench_fetch_hostile.py. Every body is
generated piece by piece (a declared 8 GiB manifest costs the server nothing), Range requests
are honoured (``bytes=A-B`` and ``bytes=A-``), and the server records each request and the
bytes it sent, so a test can say "refused within one request" and "asked for no payload".
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.bundle import tarstream

PIECE = 64 << 10


class Body:
    """What the mirror serves at one path: ``size`` bytes, produced on demand."""

    size: int

    def piece(self, start: int, n: int) -> bytes:
        raise NotImplementedError


@dataclass
class Bytes(Body):
    """A real file's bytes (a bundle, TUF metadata)."""

    data: bytes

    @property
    def size(self) -> int:  # type: ignore[override]
        return len(self.data)

    def piece(self, start: int, n: int) -> bytes:
        return self.data[start : start + n]


@dataclass
class LyingHead(Body):
    """A canonical ``manifest.json`` header declaring ``declared`` bytes, then filler.

    The header is byte-exact what the bundle writer emits for that size (valid checksum, ustar
    magic): only the size is the lie. The filler is ``{`` (the start of a JSON object) forever.
    """

    declared: int
    cap: int | None = None  # stop sending after this many bytes per request (spares the host)

    @property
    def size(self) -> int:  # type: ignore[override]
        return tarstream.BLOCK + self.declared + tarstream.padding(self.declared) + 1024

    def piece(self, start: int, n: int) -> bytes:
        head = tarstream.build_header("manifest.json", self.declared)
        out = head[start : start + n] if start < len(head) else b""
        return out + b"{" * (n - len(out))


@dataclass
class Mirror:
    """Paths the server answers, and what it did."""

    routes: dict[str, Body] = field(default_factory=dict)
    root: Path | None = None  # other paths: static files under here (Range supported)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, path: str) -> Body | None:
        if path in self.routes:
            return self.routes[path]
        if self.root is not None:
            file = (self.root / path.lstrip("/")).resolve()
            if file.is_relative_to(self.root.resolve()) and file.is_file():
                return Bytes(file.read_bytes())
        return None


def _handler(mirror: Mirror) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            rng = self.headers.get("Range")
            with mirror.lock:
                mirror.requests.append((path, rng))
            body = mirror.body(path)
            if body is None:
                self.send_error(404)
                return
            size = body.size
            cap = getattr(body, "cap", None)
            start, end = 0, size - 1
            if rng:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            pos = start
            stop = end if cap is None else min(end, start + cap - 1)
            try:
                while pos <= stop:
                    data = body.piece(pos, min(PIECE, stop + 1 - pos))
                    self.wfile.write(data)
                    with mirror.lock:
                        mirror.sent += len(data)
                    pos += len(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: fine
            if pos <= end:
                self.close_connection = True  # cut short: the client sees a closed connection

    return Handler


@contextmanager
def serve(mirror: Mirror) -> Iterator[str]:
    """Serve ``mirror`` at http://127.0.0.1:PORT while the context is open."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(mirror))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
