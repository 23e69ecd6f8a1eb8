"""A loopback HTTP server (http.server) serving one file with Range support and injected faults."""

from __future__ import annotations

import http.server
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class State:
    """What the server serves and what it did."""

    data: bytes
    resets: list[int] = field(default_factory=list)  # reset once the total sent reaches these
    sent: int = 0
    starts: list[int] = field(default_factory=list)
    piece: int = 4096
    delay: float = 0.0  # seconds per piece: keeps kernel buffers nearly empty for kill tests
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: State) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            size = len(state.data)
            start, end = 0, size - 1
            rng = self.headers.get("Range")
            if rng:
                a, _, b = rng.removeprefix("bytes=").partition("-")
                start, end = int(a), min(int(b) if b else size - 1, size - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            state.starts.append(start)
            pos = start
            while pos <= end:
                n = min(state.piece, end + 1 - pos)
                with state.lock:
                    due = [r for r in state.resets if state.sent < r <= state.sent + n]
                    if due:
                        n = due[0] - state.sent
                        state.resets.remove(due[0])
                    state.sent += n
                if n:
                    self.wfile.write(state.data[pos : pos + n])
                    self.wfile.flush()
                pos += n
                if due:  # an abrupt reset (RST), as a dropped cellular link looks
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                if state.delay:
                    time.sleep(state.delay)

    return Handler


@contextmanager
def serve(state: State) -> Iterator[str]:
    """Serve ``state.data`` at http://127.0.0.1:PORT/x.bundle while the context is open."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/x.bundle"
    finally:
        server.shutdown()
        server.server_close()
