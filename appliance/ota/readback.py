"""Read the slot back from the medium while later parts are still being written (page-cache path).

The installer's default is :mod:`appliance.ota.direct` (O_DIRECT writes); this module serves
the sinks it is given instead (``sink_factory``) and targets whose file system refuses O_DIRECT.
:class:`ReadBackSink` wraps the slot's sink. It keeps the verified chunks of the current window
(references, no copies) and, every ``window`` bytes, hands them to a helper thread that re-reads
that range **from the medium** and compares it byte for byte with the chunks, while the next
window is verified and written. Every chunk matched its signed sha256 before it was written, so
"each range reads back equal to its verified chunks" means the slot reads back as the signed
image, without a second sha256 pass over it (the pass that made installs CPU-bound).
With ``hash_readback`` the thread also computes the sha256 of the re-read bytes, for callers
that want the whole-image digest as read back (it costs one more sha256 pass).

How the re-read avoids the page cache:

* a :class:`~appliance.bundle.FileSink` (file or block device, page-cache coherent): the range
  is read with ``O_DIRECT``; the kernel first writes the range's dirty pages back, then reads the
  device, so this needs no fsync per window (durability is the installer's one ``flush`` at the
  end, before the loader is told anything);
* any other sink (the power-cut test's simulated volatile cache), or a file system without
  ``O_DIRECT`` (tmpfs before Linux 6.6): the sink is flushed, the range's clean pages dropped
  (``POSIX_FADV_DONTNEED``) and re-read through the cache.

Writes that are not sequential (no bundle payload does that) switch the overlap off; the
installer then re-reads the whole slot in one pass (:func:`read_back_sha256`). Memory stays
O(window x (depth + 2 x readers)).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import queue
from pathlib import Path

from appliance.bundle import FileSink, Sink
from appliance.ota.errors import ReadBackError
from appliance.ota.readback_common import ALIGN, ReadBackState, memcmp

READ_BLOCK = 1 << 20
WINDOW = 2 << 20
DEPTH = 1  # windows queued for re-reading before the writer waits (bounds memory)
READERS = 1  # windows re-read at once (>1 only without hash_readback; 2 measured no faster)

Job = tuple[int, int, list[bytes]]


def _address(data: bytes) -> int:
    """Address of a bytes object's buffer (valid while ``data`` is referenced)."""
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def read_back_sha256(path: Path, size: int) -> str:
    """sha256 of the first ``size`` bytes of ``path``, its clean cached pages dropped first."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        offset = 0
        while offset < size:
            block = os.pread(fd, min(READ_BLOCK, size - offset), offset)
            if not block:
                raise ReadBackError(f"{path}: ends at byte {offset}, the image has {size} bytes")
            digest.update(block)
            offset += len(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _open_direct(path: Path) -> int | None:
    """An O_DIRECT read descriptor for ``path``, or None where the file system refuses it."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return None
        raise


class ReadBackSink(ReadBackState):
    """A sink that forwards writes and checks each window as re-read from ``path``.

    ``window``: bytes per re-read; ``depth``: windows queued before the writer waits;
    ``readers``: windows re-read at once (1 with ``hash_readback``); ``direct=False``: never
    use O_DIRECT (fsync, drop the range's pages, re-read through the cache).
    """

    def __init__(
        self,
        inner: Sink,
        path: Path,
        window: int = WINDOW,
        *,
        hash_readback: bool = False,
        depth: int = DEPTH,
        readers: int = READERS,
        direct: bool = True,
    ) -> None:
        super().__init__(hash_readback=hash_readback)
        self.inner = inner
        self.path = Path(path)
        self.window = max(ALIGN, window - window % ALIGN)
        self._start = 0  # first byte of the window being collected
        self._chunks: list[bytes] = []
        self._jobs: queue.Queue[Job | None] = queue.Queue(maxsize=depth)
        # A FileSink writes through the kernel's page cache, which O_DIRECT reads bypass.
        self._coherent = isinstance(inner, FileSink)
        self._direct_fd = _open_direct(self.path) if self._coherent and direct else None
        self._use_direct = self._direct_fd is not None
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._start_readers(self._read_loop, readers)

    # -- the Sink protocol ------------------------------------------------------------------

    def write(self, offset: int, data: bytes) -> None:
        """Forward ``data``; keep it until its window was re-read and compared."""
        if offset != self._end:
            self.sequential = False
            self._chunks.clear()
        self.inner.write(offset, data)
        if not self.sequential:
            return
        self._chunks.append(data if isinstance(data, bytes) else bytes(data))
        self._end = offset + len(data)
        if self._end - self._start >= self.window:
            self._hand_over(durable=False)

    def flush(self) -> None:
        """Make everything durable (the inner sink's fsync), then re-read the last window."""
        self.inner.flush()
        if self.sequential:
            self._hand_over(durable=True)

    def close(self) -> None:
        """Stop the reader threads (after the windows already handed over), close the sink."""
        try:
            self._stop()
        finally:
            self.inner.close()

    # -- internals ----------------------------------------------------------------------------

    def _hand_over(self, *, durable: bool) -> None:
        if self._end == self._start:
            return
        if not self._coherent and not durable:
            # A sink with its own cache: the range must reach the medium before it is re-read
            # (flushed here, in the writing thread: such sinks are not thread-safe).
            self.inner.flush()
        job = (self._start, self._end, self._chunks)
        self._chunks = []
        self._start = self._end
        self._jobs.put(job)  # blocks while ``depth`` windows wait: memory stays bounded

    def _read_loop(self) -> None:
        buffer = mmap.mmap(-1, self.window + 2 * ALIGN)  # page aligned, for O_DIRECT
        view = memoryview(buffer)
        base = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        try:
            while (job := self._jobs.get()) is not None:
                if self._error is None:
                    try:
                        self._check(job, view, base)
                    except (OSError, ValueError) as exc:  # ValueError: the sink was closed
                        self._fail(job[0], f"re-reading {self.path} at byte {job[0]}: {exc}")
        finally:
            view.release()
            buffer.close()

    def _read_range(self, start: int, end: int, view: memoryview) -> tuple[int, int]:
        """Re-read [start, end) into the buffer; (buffer index of ``start``, bytes available)."""
        at, got = 0, 0
        if self._use_direct and self._direct_fd is not None:
            lo = start - start % ALIGN
            hi = -(-end // ALIGN) * ALIGN
            try:
                at = start - lo
                got = max(0, os.preadv(self._direct_fd, [view[: hi - lo]], lo) - at)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Accepted at open, refused at read (some FUSE and network file systems).
                self._use_direct = False
                at, got = 0, 0
            if got >= end - start:
                return at, got
            # A short O_DIRECT read (a file system that ends it early): the rest is re-read
            # through the page cache below instead.
        if self._coherent:
            # Dirty pages cannot be dropped: fsync first (a file descriptor's fsync is
            # thread-safe; other sinks were flushed by the writer at the hand-over).
            self.inner.flush()
        first = start + got
        os.posix_fadvise(self._fd, first, end - first, os.POSIX_FADV_DONTNEED)
        got += os.preadv(self._fd, [view[at + got : at + end - start]], first)
        return at, got

    def _check(self, job: Job, view: memoryview, base: int) -> None:
        """Re-read one window (in buffer-sized pieces) and compare it with its chunks."""
        start, end, chunks = job
        pieces = iter(chunks)
        chunk, chunk_start, used = b"", start, 0  # ``used`` bytes of ``chunk`` compared so far
        pos = start
        while pos < end:
            piece_end = min(end, pos + self.window)
            at, got = self._read_range(pos, piece_end, view)
            if got < piece_end - pos:
                self._fail(pos + got, f"{self.path} ends at byte {pos + got}, {end} were written")
                return
            if self._hash is not None:
                self._hash.update(view[at : at + piece_end - pos])
            while pos < piece_end:
                if used == len(chunk):
                    chunk_start += len(chunk)
                    chunk, used = next(pieces), 0
                n = min(len(chunk) - used, piece_end - pos)
                # memcmp through ctypes: ~10 GB/s with the GIL released (memoryview == is
                # per item, ~0.2 GB/s).
                if memcmp(base + at, _address(chunk) + used, n) != 0:
                    self._fail(
                        chunk_start,
                        f"{self.path} reads back other bytes than were written in "
                        f"[{chunk_start}, {chunk_start + len(chunk)})",
                    )
                    return
                at, used, pos = at + n, used + n, pos + n
        with self._lock:
            self._checked += end - start

    def _stop(self) -> None:
        alive = [thread for thread in self._threads if thread.is_alive()]
        for _ in alive:
            self._jobs.put(None)
        for thread in alive:
            thread.join()
        for fd in (self._fd, self._direct_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._fd, self._direct_fd, self._use_direct = -1, None, False

    @property
    def direct(self) -> bool:
        """True while ranges are re-read with O_DIRECT (past the page cache)."""
        return self._use_direct
