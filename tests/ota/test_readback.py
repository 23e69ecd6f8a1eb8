"""ReadBackSink: the digest is of bytes re-read from the file, window by window."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from appliance.bundle import FileSink
from appliance.ota.readback import ReadBackSink


def test_sequential_writes_are_hashed_as_read_back(tmp_path: Path) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    data = os.urandom(300_000)
    sink = ReadBackSink(FileSink(path), path, window=64 * 1024)
    for offset in range(0, len(data), 10_000):
        sink.write(offset, data[offset : offset + 10_000])
    sink.flush()
    sink.close()
    assert sink.digest(len(data)) == hashlib.sha256(data).hexdigest()
    assert sink.digest(len(data) + 1) is None


class LyingMedium(FileSink):
    """Stores something else than it was given after the first window (a failing medium)."""

    def write(self, offset: int, data: bytes) -> None:
        super().write(offset, data if offset < 100_000 else bytes(len(data)))


def test_what_the_medium_holds_is_what_gets_hashed(tmp_path: Path) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    data = os.urandom(200_000)
    sink = ReadBackSink(LyingMedium(path), path, window=50_000)
    for offset in range(0, len(data), 25_000):
        sink.write(offset, data[offset : offset + 25_000])
    sink.flush()
    sink.close()
    assert sink.digest(len(data)) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sink.digest(len(data)) != hashlib.sha256(data).hexdigest()


def test_out_of_order_writes_turn_the_overlap_off(tmp_path: Path) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    sink = ReadBackSink(FileSink(path), path, window=10)
    sink.write(100, b"x" * 100)
    sink.write(0, b"y" * 100)
    sink.flush()
    sink.close()
    assert not sink.sequential
    assert sink.digest(200) is None
