"""Downloads that break mid-body resume with Range (or re-read and skip) and install cleanly."""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from appliance.ota.errors import SourceError
from appliance.ota.http import ResumingHTTPStream
from appliance.ota.installer import install
from appliance.slots.state import BootState
from tools.powercut import Device


class FlakyServer:
    """Serves one body; the first ``drops`` responses are cut after ``cut`` bytes."""

    def __init__(self, body: bytes, drops: int, cut: int, ranges: bool = True, etag: str = "v1"):
        self.body, self.drops, self.cut, self.ranges, self.etag = body, drops, cut, ranges, etag
        self.requests: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and outer.ranges:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}"
                    )
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body) - start))
                self.send_header("ETag", outer.etag)
                self.end_headers()
                data = outer.body[start:]
                if outer.drops > 0:
                    outer.drops -= 1
                    self.wfile.write(data[: outer.cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/b.bundle"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    dev = Device(tmp_path / "device")
    dev.reset()
    yield dev


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_install_survives_dropped_connections(device: Device, ranges: bool) -> None:
    server = FlakyServer(device.bundle_v2, drops=3, cut=70_000, ranges=ranges)
    try:
        with ResumingHTTPStream(server.url, backoff_s=0.0) as stream:
            install(
                cast(BinaryIO, stream),  # it only needs read(n)
                policy=device.policy(),
                loader=device.loader(),
                booted="A",
                targets=device.slots,
            )
            assert stream.resumes == 3
    finally:
        server.close()
    assert device.slots["B"].read_bytes() == device.v2
    assert device.loader().read() == BootState("A", "B", 1)
    if ranges:
        assert server.requests == [None, "bytes=70000-", "bytes=140000-", "bytes=210000-"]


def test_gives_up_after_the_retries(device: Device) -> None:
    server = FlakyServer(device.bundle_v2, drops=100, cut=0)  # never any progress
    try:
        with pytest.raises(SourceError, match="after 2 retries"):
            stream = ResumingHTTPStream(server.url, retries=2, backoff_s=0.0)
            while stream.read(65536):
                pass
    finally:
        server.close()


def test_a_file_that_changed_between_attempts_is_refused(device: Device) -> None:
    server = FlakyServer(device.bundle_v2, drops=1, cut=5_000)
    try:
        stream = ResumingHTTPStream(server.url, backoff_s=0.0)
        assert len(stream.read(4096)) == 4096
        server.etag = "v2"
        with pytest.raises(SourceError, match="changed while downloading"):
            while stream.read(65536):
                pass
    finally:
        server.close()
