"""Write then read: bytes arrive intact, only after verification, and the container is standard."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import (
    FileSink,
    NullSink,
    PayloadSource,
    errors,
    open_bundle,
    peek_manifest,
    write_bundle,
)
from appliance.bundle.manifest import Limits, zstd_bound

from .kit import CHUNK, CREATED, KEY, RecordingSink, image_bytes, make_bundle, policy, read_all


class TrickleStream(io.RawIOBase):
    """A pipe-like stream: returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("size", [1, CHUNK - 1, CHUNK, CHUNK * 3 + 17])
def test_round_trip_is_exact(compression: str, size: int) -> None:
    image = image_bytes(size)
    sink = RecordingSink()
    manifest = read_all(make_bundle(image, compression=compression), sink=sink)
    assert sink.image() == image
    assert sink.early == []
    assert sink.flushes == 1
    assert manifest.payloads[0].image.size == size


def test_zstd_payload_is_smaller_and_each_chunk_a_frame() -> None:
    import zstandard

    image = bytes(CHUNK * 4)
    bundle = make_bundle(image, compression="zstd")
    m = peek_manifest(io.BytesIO(bundle))
    assert m.payloads[0].size < len(image) // 10
    assert len(m.payloads[0].chunks) == 4
    assert zstd_bound(CHUNK) >= max(c.size for c in m.payloads[0].chunks)
    assert zstandard.__version__


def test_pipe_like_stream_with_short_reads() -> None:
    image = image_bytes(CHUNK * 2 + 5)
    bundle = make_bundle(image, compression="zstd")
    verified = open_bundle(TrickleStream(bundle, 333), policy())  # type: ignore[arg-type]
    sink = RecordingSink(armed=True)
    verified.stream_payload("rootfs.img", sink)
    verified.finish()
    assert sink.image() == image


def test_nothing_reaches_the_sink_before_the_bad_chunk_is_found() -> None:
    image = image_bytes(CHUNK * 3)
    bundle = bytearray(make_bundle(image))
    # Flip a bit in chunk 1 of the payload: chunk 0 (verified) may land, chunk 1+ never.
    payload_start = len(bundle) - 1024 - CHUNK * 3
    bundle[payload_start + CHUNK + 10] ^= 4
    verified = open_bundle(io.BytesIO(bytes(bundle)), policy())
    sink = RecordingSink(armed=True)
    with pytest.raises(errors.ChunkDigestError):
        verified.stream_payload("rootfs.img", sink)
    assert sink.writes == [(0, image[:CHUNK])]
    assert sink.flushes == 0


def test_file_sink_writes_the_image(tmp_path: Path) -> None:
    image = image_bytes(CHUNK * 5 + 3)
    target = tmp_path / "slot.img"
    verified = open_bundle(io.BytesIO(make_bundle(image, compression="zstd")), policy())
    with FileSink(target, create=True) as sink:
        verified.stream_payload("rootfs.img", sink)
    verified.finish()
    assert target.read_bytes() == image
    assert (target.stat().st_mode & 0o777) == 0o600


def test_gnu_tar_and_tarfile_read_the_container(tmp_path: Path) -> None:
    image = image_bytes(CHUNK + 1)
    path = tmp_path / "x.bundle"
    path.write_bytes(make_bundle(image))
    with tarfile.open(path, "r:") as tar:
        assert tar.getnames() == ["manifest.json", "manifest.sig", "rootfs.img"]
        extracted = tar.extractfile("rootfs.img")
        assert extracted is not None and extracted.read() == image
    listing = subprocess.run(["tar", "tf", str(path)], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == ["manifest.json", "manifest.sig", "rootfs.img"]


def test_bundles_are_reproducible() -> None:
    image = image_bytes(CHUNK * 2)
    assert make_bundle(image, compression="zstd") == make_bundle(image, compression="zstd")


def test_payloads_must_be_read_in_order_and_skipped_ones_are_verified() -> None:
    from .kit import trusted_keyring

    bundle = make_bundle(keyring_payload=trusted_keyring(2).to_bytes())
    verified = open_bundle(io.BytesIO(bundle), policy())
    # The writer puts a keyring rotation first (the installer validates it before the slot).
    assert [p.kind for p in verified.manifest.payloads] == ["keyring", "full"]
    verified.stream_payload("rootfs.img", NullSink())  # skips (verifies) the keyring
    with pytest.raises(errors.PayloadOrderError):
        verified.read_keyring()
    verified.finish()


def test_writer_refuses_what_the_reader_would_refuse() -> None:
    with pytest.raises(errors.BundleError, match="version"):
        write_bundle(
            io.BytesIO(),
            key=KEY,
            product="acme-cam",
            targets=["t"],
            version="1.0",
            security_version=1,
            created=CREATED,
            payloads=[PayloadSource("rootfs.img", "full", b"x", "none")],
        )


def test_limits_are_checked_before_reading() -> None:
    bundle = make_bundle(image_bytes(CHUNK * 2))
    with pytest.raises(errors.SizeLimitError):
        open_bundle(io.BytesIO(bundle), policy(limits=Limits(max_payload_size=CHUNK)))


def test_import_bundle_does_not_load_zstandard() -> None:
    code = (
        "import sys, appliance.bundle, appliance.bundle.cli; assert 'zstandard' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


@pytest.mark.parametrize("content_size", [True, False])
def test_signed_but_wrong_zstd_frame_is_a_named_error(content_size: bool) -> None:
    import hashlib

    import zstandard

    from .kit import Member, assemble, resign, split_members

    image = image_bytes(CHUNK)
    bundle = make_bundle(image, compression="zstd")
    frame = zstandard.ZstdCompressor(write_content_size=content_size).compress(image[:-1])
    members = split_members(bundle)
    members[2] = Member("rootfs.img", frame)

    def edit(m: dict) -> None:  # type: ignore[type-arg]
        p = m["payloads"][0]
        p["chunks"] = [{"sha256": hashlib.sha256(frame).hexdigest(), "size": len(frame)}]
        p["size"] = len(frame)

    forged = resign(assemble(members), edit)
    sink = RecordingSink()
    with pytest.raises(errors.DecompressionError):
        read_all(forged, sink=sink)
    assert sink.writes == []


class FailingSink(RecordingSink):
    """Fails on the second write, like a device that returns EIO."""

    def write(self, offset: int, data: bytes) -> None:
        if len(self.writes) == 1:
            raise OSError(5, "Input/output error")
        super().write(offset, data)


def test_sink_error_reaches_the_caller_and_no_thread_is_left() -> None:
    import threading

    before = threading.active_count()
    verified = open_bundle(io.BytesIO(make_bundle(image_bytes(CHUNK * 6))), policy())
    sink = FailingSink(armed=True)
    with pytest.raises(OSError, match="Input/output"):
        verified.stream_payload("rootfs.img", sink)
    assert len(sink.writes) == 1 and sink.flushes == 0
    assert threading.active_count() == before


@pytest.mark.parametrize("short", [False, True])
def test_stream_from_an_http_body_on_loopback(short: bool) -> None:
    import http.server
    import threading
    import urllib.request

    image = image_bytes(CHUNK * 4 + 9)
    bundle = make_bundle(image, compression="zstd")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(bundle)))
            self.end_headers()
            body = bundle[: len(bundle) // 2] if short else bundle  # short: connection drops
            for i in range(0, len(body), 1000):  # many small TCP writes
                self.wfile.write(body[i : i + 1000])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/x.bundle"
        sink = RecordingSink(armed=True)
        with urllib.request.urlopen(url, timeout=10) as body:
            verified = open_bundle(body, policy(), url)
            if short:
                with pytest.raises(errors.TruncatedBundleError):
                    verified.stream_payload("rootfs.img", sink)
                return
            verified.stream_payload("rootfs.img", sink)
            verified.finish()
    finally:
        server.shutdown()
        server.server_close()
    assert sink.image() == image
