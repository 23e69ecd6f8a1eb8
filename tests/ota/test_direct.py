"""DirectReadBackSink: O_DIRECT region writes, each made durable and re-read while writing on."""

from __future__ import annotations

import hashlib
import mmap
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.ota.direct import ALIGN, DirectMedium, DirectReadBackSink
from appliance.ota.errors import ReadBackError
from tools.powercut import VolatileMedium

REGION = 64 * 1024


def write_all(sink: DirectReadBackSink, data: bytes, step: int) -> None:
    for offset in range(0, len(data), step):
        sink.write(offset, data[offset : offset + step])
    sink.flush()


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("size", [1, ALIGN, 300_000, 4 * REGION, 4 * REGION + 4097])
@pytest.mark.parametrize("step", [10_000, REGION, 3 * REGION])
@pytest.mark.parametrize("readers", [1, 2])
def test_sequential_writes_are_written_re_read_and_compared(
    tmp_path: Path, size: int, step: int, readers: int
) -> None:
    path = empty_file(tmp_path / "slot.img")
    data = os.urandom(size)
    sink = DirectReadBackSink(
        DirectMedium(path), region=REGION, regions=3, piece=REGION // 4, readers=readers
    )
    write_all(sink, data, step)
    assert sink.checked(size)
    assert not sink.checked(size + 1)
    assert sink.digest() is None  # no hash unless asked for
    sink.close()
    assert path.read_bytes() == data


def test_hash_readback_digests_the_bytes_as_re_read(tmp_path: Path) -> None:
    path = empty_file(tmp_path / "slot.img")
    data = os.urandom(5 * REGION + 123)
    sink = DirectReadBackSink(DirectMedium(path), region=REGION, hash_readback=True)
    write_all(sink, data, 50_000)
    assert sink.checked(len(data)) and sink.digest() == hashlib.sha256(data).hexdigest()
    sink.close()


class EventLog(VolatileMedium):
    """The power-cut model's volatile cache, recording the order of writes, syncs and reads."""

    def __init__(self, path: Path, log: Path) -> None:
        super().__init__(path, log)
        self.events: list[tuple[str, int, int]] = []
        self.events_lock = threading.Lock()

    def _note(self, kind: str, offset: int, size: int) -> None:
        with self.events_lock:
            self.events.append((kind, offset, size))

    def write(self, offset: int, data: memoryview) -> None:
        super().write(offset, data)
        self._note("write", offset, len(data))

    def sync(self) -> None:
        with self.events_lock:  # noted with the sync, so no write slips between
            super().sync()
            self.events.append(("sync", 0, 0))

    def read(self, offset: int, out: memoryview) -> int:
        self._note("read", offset, len(out))
        return super().read(offset, out)


def test_each_region_is_durable_before_it_is_re_read(tmp_path: Path) -> None:
    # Under a volatile cache, a region re-read before its sync would not match the bytes;
    # the event order also shows each re-read range was written before the sync preceding it.
    path = empty_file(tmp_path / "slot.img")
    medium = EventLog(path, tmp_path / "cache.log")
    data = os.urandom(8 * REGION)
    sink = DirectReadBackSink(medium, region=REGION, piece=REGION // 2)
    write_all(sink, data, 20_000)
    assert sink.checked(len(data))
    sink.close()
    durable = 0  # bytes written before the latest sync
    written = 0
    for kind, offset, size in medium.events:
        if kind == "write":
            written = max(written, offset + size)
        elif kind == "sync":
            durable = written
        else:
            assert offset + size <= durable, f"read [{offset}, {offset + size}) before its sync"
    assert sum(1 for kind, _, _ in medium.events if kind == "sync") >= 8  # one per region
    assert path.read_bytes() == data


class FailingMedium(DirectMedium):
    """A medium that silently corrupts one byte it is given (a failing eMMC)."""

    def __init__(self, path: Path, bad: int) -> None:
        super().__init__(path)
        self.bad = bad

    def write(self, offset: int, data: memoryview) -> None:
        if offset <= self.bad < offset + len(data):
            copy = bytearray(data)
            copy[self.bad - offset] ^= 0xFF
            data = memoryview(copy)  # an unaligned copy: written through the page cache
            self.write_tail(offset, bytes(data))
            return
        super().write(offset, data)


class TwiceFailingMedium(FailingMedium):
    """Also corrupts the last byte: with parallel readers the lowest bad offset is reported."""

    def write(self, offset: int, data: memoryview) -> None:
        if offset + len(data) == 5 * REGION:
            copy = bytearray(data)
            copy[-1] ^= 0xFF
            self.write_tail(offset, bytes(copy))
            return
        super().write(offset, data)


@pytest.mark.parametrize("bad", [0, REGION + 4097, 5 * REGION - 1])
@pytest.mark.parametrize("readers", [1, 2])
def test_a_medium_returning_other_bytes_is_caught_at_the_first_bad_byte(
    tmp_path: Path, bad: int, readers: int
) -> None:
    path = empty_file(tmp_path / "slot.img")
    sink = DirectReadBackSink(
        TwiceFailingMedium(path, bad), region=REGION, regions=4, piece=REGION // 4, readers=readers
    )
    write_all(sink, os.urandom(5 * REGION), 30_000)
    with pytest.raises(ReadBackError, match=f"other bytes than were written at byte {bad} "):
        sink.checked(5 * REGION)
    sink.close()


class ShortMedium(DirectMedium):
    """A medium that ends early (a partition smaller than what was written to it)."""

    def read(self, offset: int, out: memoryview) -> int:
        return max(0, min(super().read(offset, out), 2 * REGION - offset))


def test_a_medium_that_ends_early_fails_the_read_back(tmp_path: Path) -> None:
    path = empty_file(tmp_path / "slot.img")
    sink = DirectReadBackSink(ShortMedium(path), region=REGION)
    write_all(sink, os.urandom(3 * REGION), REGION)
    with pytest.raises(ReadBackError, match=f"ends at byte {2 * REGION}"):
        sink.checked(3 * REGION)
    sink.close()


def test_out_of_order_writes_leave_the_check_to_a_full_re_read(tmp_path: Path) -> None:
    path = empty_file(tmp_path / "slot.img")
    data = os.urandom(3 * REGION)
    sink = DirectReadBackSink(DirectMedium(path), region=REGION)
    sink.write(0, data[:100])
    sink.write(2 * REGION, data[2 * REGION :])
    sink.write(100, data[100 : 2 * REGION])
    sink.flush()
    assert not sink.sequential
    assert not sink.checked(len(data))
    sink.close()
    assert path.read_bytes() == data


def test_writes_after_a_mid_stream_flush_still_land(tmp_path: Path) -> None:
    path = empty_file(tmp_path / "slot.img")
    data = os.urandom(3 * REGION)
    sink = DirectReadBackSink(DirectMedium(path), region=REGION)
    sink.write(0, data[:10_000])
    sink.flush()  # leaves an unaligned end: O_DIRECT cannot go on from there
    sink.write(10_000, data[10_000:])
    sink.flush()
    assert not sink.checked(len(data))  # the installer re-reads and hashes the whole slot
    sink.close()
    assert path.read_bytes() == data


class BrokenMedium(DirectMedium):
    """A medium whose write fails with EIO from its third region on (a dying eMMC)."""

    def write(self, offset: int, data: memoryview) -> None:
        if offset >= 2 * REGION:
            raise OSError(5, "Input/output error")
        super().write(offset, data)


def test_a_failing_region_write_is_raised_to_the_writer_and_never_checked(
    tmp_path: Path,
) -> None:
    # The O_DIRECT writes run on the sink's own thread: the failure must still reach the
    # caller (at a later write or at flush), and no region at or after it counts as checked.
    path = empty_file(tmp_path / "slot.img")
    sink = DirectReadBackSink(BrokenMedium(path), region=REGION, regions=3)
    data = os.urandom(6 * REGION)
    with pytest.raises(OSError, match="Input/output error"):
        write_all(sink, data, 10_000)
    with pytest.raises(OSError, match="Input/output error"):
        sink.flush()
    assert not sink.checked(len(data))
    assert sink._checked <= 2 * REGION  # only regions written before the failure re-read
    sink.close()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(loop device, its backing file): a real block device, 4 MiB."""
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(4 << 20)
    try:
        attached = subprocess.run(
            ["losetup", "--direct-io=on", "--find", "--show", str(backing)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot attach a loop device here: {exc}")
    device = Path(attached.stdout.strip())
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "--detach", str(device)], check=True, capture_output=True)


@pytest.mark.integration
def test_block_device_re_read_sees_the_medium_not_the_page_cache(
    loop_device: tuple[Path, Path],
) -> None:
    device, backing = loop_device
    data = os.urandom(3 * REGION + 512)
    sink = DirectReadBackSink(DirectMedium(device), region=REGION, hash_readback=True)
    write_all(sink, data, 40_000)
    assert sink.checked(len(data)) and sink.digest() == hashlib.sha256(data).hexdigest()
    sink.close()
    assert backing.read_bytes()[: len(data)] == data
    # Cache block 0 of the device, then change it underneath (in the backing file): a buffered
    # read may still show the cached bytes, the medium's O_DIRECT read must show the new ones.
    with device.open("rb") as f:
        assert f.read(ALIGN) == data[:ALIGN]
    new = os.urandom(ALIGN)
    fd = os.open(backing, os.O_WRONLY)
    try:
        os.pwrite(fd, new, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    medium = DirectMedium(device)
    buffer = mmap.mmap(-1, ALIGN)
    try:
        assert medium.read(0, memoryview(buffer)) == ALIGN
        assert buffer[:] == new
    finally:
        buffer.close()
        medium.close()


def _mapping_flags(address: int) -> str:
    """The permission column (e.g. ``rw-p``) of the mapping of this process holding ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, perms = line.split()[:2]
        start, end = (int(x, 16) for x in span.split("-"))
        if start <= address < end:
            return perms
    raise AssertionError(f"no mapping holds {address:#x}")


def test_region_buffers_are_private_memory_not_shmem(tmp_path: Path) -> None:
    """Shared anonymous buffers are shmem: each first touch of a page went through shmem_fault
    (docs/decisions.md §35). The buffers must be private (``p`` in /proc/self/maps)."""
    import ctypes

    sink = DirectReadBackSink(DirectMedium(empty_file(tmp_path / "slot.img")), region=REGION)
    try:
        data = os.urandom(3 * REGION)
        write_all(sink, data, REGION)
        assert sink.checked(len(data))
        for buffer in sink._buffers:
            address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
            assert _mapping_flags(address).endswith("p"), _mapping_flags(address)
    finally:
        sink.close()
    assert (tmp_path / "slot.img").read_bytes() == data
