"""ReadBackSink: each window is re-read from the file and compared with what was written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from appliance.bundle import FileSink
from appliance.ota.errors import ReadBackError
from appliance.ota.readback import ReadBackSink, read_back_sha256


class CachedUntilFlush:
    """Not a FileSink: keeps writes in memory until flush (a volatile write cache)."""

    def __init__(self, path: Path) -> None:
        self.file = FileSink(path)
        self.cache: list[tuple[int, bytes]] = []

    def write(self, offset: int, data: bytes) -> None:
        self.cache.append((offset, data))

    def flush(self) -> None:
        for offset, data in self.cache:
            self.file.write(offset, data)
        self.cache.clear()
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_all(sink: ReadBackSink, data: bytes, step: int) -> None:
    for offset in range(0, len(data), step):
        sink.write(offset, data[offset : offset + step])
    sink.flush()
    sink.close()


@pytest.mark.parametrize("size", [300_000, 1 << 20, 4096 * 37 + 1])
@pytest.mark.parametrize("readers", [1, 2])
def test_sequential_writes_are_re_read_and_compared(
    tmp_path: Path, size: int, readers: int
) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    data = os.urandom(size)
    sink = ReadBackSink(FileSink(path), path, window=64 * 1024, readers=readers)
    write_all(sink, data, 10_000)
    assert sink.checked(len(data))
    assert sink.digest() is None  # no hash unless asked for
    assert not sink.checked(len(data) + 1)
    assert path.read_bytes() == data
    hashed = ReadBackSink(FileSink(path), path, window=64 * 1024, hash_readback=True)
    write_all(hashed, data, 10_000)
    assert hashed.checked(len(data)) and hashed.digest() == hashlib.sha256(data).hexdigest()


def test_file_sinks_are_re_read_with_o_direct(tmp_path: Path) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    sink = ReadBackSink(FileSink(path), path)
    try:
        if not sink.direct:
            pytest.skip(f"{tmp_path}'s file system refuses O_DIRECT")
    finally:
        sink.close()
    assert not ReadBackSink(CachedUntilFlush(path), path).direct  # no page cache to bypass


@pytest.mark.parametrize("readers", [1, 2])
def test_without_o_direct_each_window_is_synced_dropped_and_re_read(
    tmp_path: Path, readers: int
) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    data = os.urandom(4096 * 50 + 7)
    sink = ReadBackSink(FileSink(path), path, window=16384, readers=readers, direct=False)
    assert not sink.direct
    write_all(sink, data, 5_000)
    assert sink.checked(len(data))


def test_other_sinks_are_flushed_before_each_window_is_re_read(tmp_path: Path) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    data = os.urandom(200_000)
    inner = CachedUntilFlush(path)
    sink = ReadBackSink(inner, path, window=8192, hash_readback=True)
    write_all(sink, data, 5_000)
    assert sink.checked(len(data))
    assert sink.digest() == hashlib.sha256(data).hexdigest()


class LyingMedium(FileSink):
    """Stores something else than it was given from byte 100_000 on (a failing medium)."""

    def write(self, offset: int, data: bytes) -> None:
        super().write(offset, data if offset < 100_000 else bytes(len(data)))


@pytest.mark.parametrize(
    ("hash_readback", "readers", "direct"),
    [(False, 1, True), (True, 1, True), (False, 2, True), (False, 1, False)],
)
def test_what_the_medium_returns_is_what_gets_compared(
    tmp_path: Path, hash_readback: bool, readers: int, direct: bool
) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    data = os.urandom(200_000)
    sink = ReadBackSink(
        LyingMedium(path),
        path,
        window=50_000,
        hash_readback=hash_readback,
        readers=readers,
        direct=direct,
    )
    write_all(sink, data, 25_000)
    with pytest.raises(ReadBackError, match=r"other bytes than were written in \[100000, 125000\)"):
        sink.checked(len(data))


def test_a_short_medium_is_reported(tmp_path: Path) -> None:
    class Short(FileSink):
        def write(self, offset: int, data: bytes) -> None:
            if offset < 50_000:
                super().write(offset, data)

    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    sink = ReadBackSink(Short(path), path, window=4096)
    write_all(sink, os.urandom(100_000), 10_000)
    with pytest.raises(ReadBackError, match="ends at byte"):
        sink.checked(100_000)


def test_out_of_order_writes_turn_the_overlap_off(tmp_path: Path) -> None:
    path = tmp_path / "slot.img"
    path.write_bytes(b"")
    sink = ReadBackSink(FileSink(path), path, window=4096)
    sink.write(100, b"x" * 100)
    sink.write(0, b"y" * 100)
    sink.flush()
    sink.close()
    assert not sink.sequential
    assert not sink.checked(200)
    assert read_back_sha256(path, 200) == hashlib.sha256(b"y" * 100 + b"x" * 100).hexdigest()
