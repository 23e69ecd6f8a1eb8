"""Write the slot with O_DIRECT and read each region back while the next one is written.

:class:`DirectReadBackSink` is the installer's sink for a slot on a file system or block device
that accepts ``O_DIRECT``. The bundle reader hands it verified chunks in order; it copies them
into one of a few page-aligned region buffers; a write thread writes each full region with
``O_DIRECT`` (no page cache: no page allocation, no copy into the cache, no writeback later)
while the caller fills the next. Re-read threads then make the region durable
(``fdatasync``), re-read it from the medium with ``O_DIRECT`` and compare it byte for byte with
the buffer it was written from, while later regions are filled and written. Total time
approaches max(write, read) instead of their sum, and memory is
``regions x region + readers x piece``, constant in the image size.

Why this keeps the update-flow invariants:

* only verified bytes are written (the reader hands on only verified chunks, in order);
* a region is re-read only after ``fdatasync`` returned, so the bytes compared are the ones the
  medium holds, not a cache's (the page cache is never involved with ``O_DIRECT``);
* :meth:`flush` writes what is left and ``fsync`` s the target; :meth:`checked` returns only
  after every region was re-read and found equal, and the installer tells the loader nothing
  before that.

The I/O itself sits behind :class:`Medium`, so the power-cut test can put a simulated volatile
write cache under the same logic (docs/decisions.md §13).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import queue
import threading
from pathlib import Path
from typing import Protocol

from appliance.ota.readback_common import ALIGN, ReadBackState, memcmp

log = logging.getLogger(__name__)

REGION = 4 << 20  # bytes per O_DIRECT write and per durable read-back unit
REGIONS = 3  # region buffers: one filled, one written, one re-read at once (bounds memory)
PIECE = 2 << 20  # bytes per O_DIRECT re-read
READERS = 2  # regions re-read at once (each its own piece buffer): two reads in flight


Job = tuple[int, int, int]  # (buffer index, first byte, length)


class Medium(Protocol):
    """Where a :class:`DirectReadBackSink` writes; offsets/lengths of ``write`` are aligned.

    ``write`` and ``write_tail`` are called from the writing thread, ``sync`` and ``read`` from
    the read-back thread, possibly at the same time.
    """

    def write(self, offset: int, data: memoryview) -> None:
        """Write aligned ``data`` (page-aligned buffer, ALIGN-multiple length) at ``offset``."""

    def write_tail(self, offset: int, data: bytes) -> None:
        """Write the image's last, unaligned bytes (or any bytes written out of order)."""

    def sync(self) -> None:
        """Make everything written so far durable."""

    def read(self, offset: int, out: memoryview) -> int:
        """Read from the medium itself (never a cache) into aligned ``out``; bytes read."""

    def close(self) -> None:
        """Release the target."""


class DirectMedium:
    """A file or block device opened with ``O_DIRECT`` (plus a buffered descriptor for tails).

    Raises :class:`DirectUnsupported` where the file system refuses ``O_DIRECT`` (tmpfs before
    Linux 6.6, some FUSE and network file systems).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._direct = self._buffered = -1
        try:
            self._direct = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | os.O_DIRECT)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                raise DirectUnsupported(f"{self.path}: O_DIRECT refused ({exc.strerror})") from None
            raise
        self._buffered = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)

    def write(self, offset: int, data: memoryview) -> None:
        """pwrite all of ``data`` with O_DIRECT (loops over short writes)."""
        while data:
            try:
                done = os.pwrite(self._direct, data, offset)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # accepted at open, refused at write (FUSE)
                    raise DirectUnsupported(f"{self.path}: O_DIRECT write refused") from None
                raise
            data, offset = data[done:], offset + done

    def write_tail(self, offset: int, data: bytes) -> None:
        """Buffered pwrite: the page cache takes unaligned bytes; sync() writes them back."""
        view = memoryview(data)
        while view:
            done = os.pwrite(self._buffered, view, offset)
            view, offset = view[done:], offset + done

    def sync(self) -> None:
        """fdatasync: O_DIRECT writes reach the device's cache; this flushes it (and tails)."""
        os.fdatasync(self._buffered)  # the page cache's dirty tail pages, then a device flush

    def read(self, offset: int, out: memoryview) -> int:
        """O_DIRECT pread; the kernel writes back any dirty cached page of the range first."""
        return os.preadv(self._direct, [out], offset)

    def close(self) -> None:
        """Close both descriptors (idempotent)."""
        for fd in (self._direct, self._buffered):
            if fd >= 0:
                os.close(fd)
        self._direct = self._buffered = -1


class DirectUnsupported(OSError):
    """The target's file system does not do O_DIRECT; use the page-cache read-back instead."""


class DirectReadBackSink(ReadBackState):
    """Sink writing aligned regions with O_DIRECT; re-reads each durable region on a thread.

    ``region``: bytes per write and per re-read unit; ``regions``: buffers (>= 2 to overlap);
    ``hash_readback``: also sha256 the re-read bytes (:meth:`digest`).
    """

    def __init__(
        self,
        medium: Medium,
        *,
        region: int = REGION,
        regions: int = REGIONS,
        piece: int = PIECE,
        readers: int = READERS,
        hash_readback: bool = False,
        label: str = "slot",
    ) -> None:
        super().__init__(hash_readback=hash_readback)
        self.medium = medium
        self.label = label
        self.region = max(ALIGN, region - region % ALIGN)
        self.piece = max(ALIGN, min(self.region, piece - piece % ALIGN))
        self._buffers = [_anonymous(self.region) for _ in range(max(2, regions))]
        self._views = [memoryview(b) for b in self._buffers]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(len(self._buffers)):
            self._free.put(i)
        self._current = self._free.get()
        self._fill = 0  # bytes of the current buffer holding data
        self._start = 0  # image offset of the current buffer's first byte
        self._writes: queue.Queue[Job | None] = queue.Queue()  # full regions to write
        self._write_error: BaseException | None = None
        self._jobs: queue.Queue[Job | None] = queue.Queue()  # written regions to re-read
        self._start_readers(self._read_loop, readers)
        # The O_DIRECT writes get their own thread: the caller fills the next region meanwhile.
        self._writer = threading.Thread(target=self._write_loop, name="slot-write", daemon=True)
        self._writer.start()

    # -- the Sink protocol ------------------------------------------------------------------

    # write() only copies into a region buffer (the O_DIRECT write has its own thread), so the
    # bundle reader calls it directly, without a write-behind thread (writebehind.writer_for).
    writes_behind = True

    def write(self, offset: int, data: bytes) -> None:
        """Copy verified ``data`` into the region buffer; write the region when it is full."""
        if offset != self._end or not self.sequential or self._start % ALIGN:
            # (an unaligned start follows only a flush() in mid-stream)
            self._not_sequential(offset, data)
            return
        if self._write_error is not None:
            raise self._write_error
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), self.region - self._fill)
            self._views[self._current][self._fill : self._fill + n] = view[:n]
            self._fill += n
            self._end += n
            view = view[n:]
            if self._fill == self.region:
                self._write_region()

    def flush(self) -> None:
        """Write what is left (its unaligned tail buffered), make it all durable."""
        if self.sequential and self._fill:
            self._write_region()
        self._writes.join()
        if self._write_error is not None:
            raise self._write_error
        self.medium.sync()

    def close(self) -> None:
        """Stop the read-back thread (after the regions handed over), release the target."""
        try:
            self._stop()
        finally:
            self.medium.close()
            for view in self._views:
                view.release()
            for buffer in self._buffers:
                buffer.close()
            self._views, self._buffers = [], []

    # -- writer side --------------------------------------------------------------------------

    def _write_region(self) -> None:
        """Hand the current buffer to the write thread; take a free one."""
        self._writes.put((self._current, self._start, self._fill))
        self._start, self._fill = self._start + self._fill, 0
        self._current = self._free.get()  # waits while every other buffer is written or re-read

    def _write_loop(self) -> None:
        """O_DIRECT-write each full region (its unaligned tail buffered), queue its re-read."""
        while (job := self._writes.get()) is not None:
            index, start, fill = job
            try:
                if self._write_error is None:
                    aligned = fill - fill % ALIGN
                    if aligned:
                        self.medium.write(start, self._views[index][:aligned])
                    if fill > aligned:
                        # Only the image's very end is unaligned: the page cache takes it.
                        tail = bytes(self._views[index][aligned:fill])
                        self.medium.write_tail(start + aligned, tail)
            except BaseException as exc:  # raised on the caller's thread (write/flush)
                log.debug("%s: writing at byte %d failed", self.label, start, exc_info=True)
                # Its frames hold a view of the region buffer, which close() must release.
                self._write_error = exc.with_traceback(None)
            finally:
                # A region that was not written is not re-read (checked() then fails).
                if self._write_error is None:
                    self._jobs.put(job)
                else:
                    self._free.put(index)
                self._writes.task_done()

    def _not_sequential(self, offset: int, data: bytes) -> None:
        """Out-of-order writes (no bundle payload makes them): no overlapped read-back then."""
        if self.sequential:
            self.sequential = False
            if self._fill:
                self._write_region()
            self._writes.join()  # the medium sees the writes in order
            log.warning("%s: writes out of order; the slot is re-read in one pass", self.label)
        self.medium.write_tail(offset, bytes(data))

    # -- read-back side -----------------------------------------------------------------------

    def _read_loop(self) -> None:
        buffer = _anonymous(self.piece)  # page aligned, for O_DIRECT
        view = memoryview(buffer)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        try:
            while (job := self._jobs.get()) is not None:
                index, start, length = job
                if self._error is None:
                    try:
                        self.medium.sync()  # durable before it is re-read: the medium's bytes
                        self._check(index, start, length, view, address)
                    except Exception as exc:  # reported by checked(); the writer must not hang
                        self._fail(start, f"re-reading {self.label} at byte {start}: {exc}")
                self._free.put(index)
        finally:
            view.release()
            buffer.close()

    def _check(self, index: int, start: int, length: int, view: memoryview, address: int) -> None:
        """Re-read one region piece by piece and compare it with the buffer it was written from."""
        written = ctypes.addressof(ctypes.c_char.from_buffer(self._buffers[index]))
        done = 0
        while done < length:
            n = min(self.piece, length - done)
            want = -(-n // ALIGN) * ALIGN  # a short last piece is read whole-block
            got = self.medium.read(start + done, view[:want])
            if got < n:
                end = start + done + max(got, 0)
                self._fail(end, f"{self.label} ends at byte {end}, {start + length} were written")
                return
            # memcmp through ctypes: ~10 GB/s with the GIL released.
            if memcmp(address, written + done, n) != 0:
                bad = start + done + _first_difference(view[:n], self._views[index][done:])
                self._fail(
                    bad,
                    f"{self.label} reads back other bytes than were written at byte {bad} "
                    f"(region [{start}, {start + length}))",
                )
                return
            if self._hash is not None:
                self._hash.update(view[:n])
            done += n
        with self._lock:
            self._checked += length

    def _stop(self) -> None:
        if self._writer.is_alive():  # the queued regions are written (and re-read) first
            self._writes.put(None)
            self._writer.join()
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _ in alive:
            self._jobs.put(None)
        for thread in alive:
            thread.join()


def _anonymous(size: int) -> mmap.mmap:
    """A page-aligned private anonymous buffer of ``size`` bytes.

    ``mmap.mmap(-1, n)`` maps *shared* anonymous memory, which Linux backs with shmem: the first
    touch of each page of the fresh buffers of every install (4096 per install) went through
    ``shmem_fault`` and a page-cache insertion. Private memory takes the plain anonymous fault:
    the sink's CPU per 64 MiB install 0.048 -> 0.041 s (medians of five alternated runs; a LAN
    push's device CPU 0.986 x, docs/decisions.md §35). Huge pages (``MADV_HUGEPAGE``) cut the
    faults to ~15 but cost more CPU (0.055 s) on a host whose memory is fragmented.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _first_difference(a: memoryview, b: memoryview) -> int:
    """Index of the first byte where ``a`` and ``b`` differ (only called on a mismatch)."""
    step = 4096
    for at in range(0, len(a), step):
        if a[at : at + step] != b[at : at + step]:
            return at + next(i for i in range(len(a[at : at + step])) if a[at + i] != b[at + i])
    return len(a)
