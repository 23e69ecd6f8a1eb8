"""Read the slot back from the medium while later parts are still being written.

:class:`ReadBackSink` wraps the slot's sink. Every ``window`` bytes it makes what was written so
far durable (``flush``: fsync), and a helper thread drops that range from the page cache and
re-reads and hashes it, in order, while the next window is verified and written. At the end the
installer compares :meth:`digest` with the signed image digest: the same check as re-reading the
whole slot after writing it, without a second full pass after the write. Writes that are not
sequential (no such bundle payload exists today) switch the overlap off; the installer then
reads the slot back in one pass.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from pathlib import Path

from appliance.bundle import Sink

READ_BLOCK = 1 << 20
WINDOW = 32 << 20


class ReadBackSink:
    """A sink that forwards writes and hashes the durable bytes as re-read from ``path``."""

    def __init__(self, inner: Sink, path: Path, window: int = WINDOW) -> None:
        self.inner = inner
        self.path = Path(path)
        self.window = window
        self.sequential = True
        self._end = 0  # bytes written, contiguously from 0
        self._durable = 0  # bytes made durable and handed to the reader thread
        self._hash = hashlib.sha256()
        self._hashed = 0
        self._error: str | None = None
        self._jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._read_loop, name="slot-read-back", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            start, end = job
            if self._error is not None:
                continue
            # The range was fsynced: dropping its clean pages makes this a read of the medium.
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)
            offset = start
            while offset < end:
                block = os.pread(self._fd, min(READ_BLOCK, end - offset), offset)
                if not block:
                    self._error = f"{self.path} ends at byte {offset}, {end} were written"
                    break
                self._hash.update(block)
                offset += len(block)
            self._hashed = offset

    def _hand_over(self) -> None:
        if self._end > self._durable:
            self._jobs.put((self._durable, self._end))
            self._durable = self._end

    def write(self, offset: int, data: bytes) -> None:
        if offset != self._end:
            self.sequential = False
        self.inner.write(offset, data)
        if not self.sequential:
            return
        self._end = offset + len(data)
        if self._end - self._durable >= self.window:
            self.inner.flush()
            self._hand_over()

    def flush(self) -> None:
        self.inner.flush()
        if self.sequential:
            self._hand_over()

    def close(self) -> None:
        """Close the inner sink and stop the reader thread."""
        try:
            self.inner.close()
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def digest(self, size: int) -> str | None:
        """sha256 of the first ``size`` bytes as re-read, or None if they were not all covered."""
        self._stop()
        if self._error is not None or not self.sequential or self._hashed != size:
            return None
        if self._end != size:
            return None
        return self._hash.hexdigest()

    @property
    def error(self) -> str | None:
        return self._error
