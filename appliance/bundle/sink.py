"""Where verified slot-image bytes go: a tiny protocol and the file/block-device sink.

The reader hands a sink only chunks whose digests matched the signed manifest. The OTA
installer writes through a sink; the power-cut test supplies one that models a volatile write
cache (docs/decisions.md §13). The reader never knows where the bytes go.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

from appliance.bundle.errors import SizeLimitError


@runtime_checkable
class Sink(Protocol):
    """Receives verified bytes at absolute offsets of the slot image."""

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset`` (may stay in a volatile cache until :meth:`flush`).

        Called in offset order and never concurrently: from the write-behind thread, or from
        the reading thread itself for a sink with ``writes_behind = True`` (it has its own
        writer thread; see :func:`~appliance.bundle.writebehind.writer_for`).
        """

    def flush(self) -> None:
        """Make everything written so far durable (fsync for files and block devices)."""

    def close(self) -> None:
        """Release the target; does not imply :meth:`flush`."""


class FileSink:
    """Writes with ``os.pwrite`` to a regular file or a block device; ``flush`` is ``fsync``."""

    def __init__(self, path: Path | str, *, create: bool = False, truncate: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CLOEXEC
        if create:
            flags |= os.O_CREAT
        if truncate:
            flags |= os.O_TRUNC
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, flags, 0o600)

    def _require_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"sink {self.path} is closed")
        return self._fd

    def write(self, offset: int, data: bytes) -> None:
        """pwrite all of ``data`` at ``offset`` (loops over short writes)."""
        fd = self._require_fd()
        view = memoryview(data)
        while view:
            done = os.pwrite(fd, view, offset)
            view = view[done:]
            offset += done

    def flush(self) -> None:
        """fsync the file or device."""
        os.fsync(self._require_fd())

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NullSink:
    """Discards bytes: ``appliance bundle verify`` streams through it."""

    def write(self, offset: int, data: bytes) -> None:
        """Drop ``data``."""

    def flush(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""


class MemorySink:
    """Collects bytes in memory up to ``limit`` (used for small payloads such as keyrings)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()

    def write(self, offset: int, data: bytes) -> None:
        """Place ``data`` at ``offset`` in the buffer."""
        end = offset + len(data)
        if end > self.limit:
            raise SizeLimitError(f"in-memory payload grows past its limit of {self.limit} bytes")
        if end > len(self.buffer):
            self.buffer.extend(bytes(end - len(self.buffer)))
        self.buffer[offset:end] = data

    def flush(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to release."""
