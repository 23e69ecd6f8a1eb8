"""What both read-back sinks share: the byte comparison, the failure record and the verdict.

:class:`~appliance.ota.readback.ReadBackSink` (page-cache path) and
:class:`~appliance.ota.direct.DirectReadBackSink` (O_DIRECT path) differ in how they write and
re-read; how they compare, record the lowest failing offset and answer :meth:`checked` is one
piece of code, here.
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
from collections.abc import Callable

from appliance.ota.errors import ReadBackError

ALIGN = 4096  # O_DIRECT offset/length/buffer alignment that every Linux block size divides

_libc = ctypes.CDLL(None, use_errno=True)
memcmp = _libc.memcmp
memcmp.restype = ctypes.c_int
memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class ReadBackState:
    """Progress and verdict of a read-back; subclasses re-read and call :meth:`_fail`.

    Holds bytes written in order (``_end``), bytes re-read and found equal (``_checked``), the
    optional sha256 of the re-read bytes, and the failure at the lowest offset (readers run in
    parallel). Subclasses implement ``_stop`` (finish and join their threads).
    """

    def __init__(self, *, hash_readback: bool) -> None:
        self.sequential = True
        self._end = 0  # bytes written, contiguously from 0
        self._hash = hashlib.sha256() if hash_readback else None
        self._checked = 0  # bytes re-read and found equal (ranges are disjoint)
        self._lock = threading.Lock()
        self._error: str | None = None
        self._error_at = -1  # the failure at the lowest offset wins (readers run in parallel)
        self._threads: list[threading.Thread] = []

    def _start_readers(self, loop: Callable[[], None], readers: int) -> None:
        """Start the re-read threads: one when hashing (the hash needs the ranges in order)."""
        self._threads = [
            threading.Thread(target=loop, name=f"slot-read-back-{i}", daemon=True)
            for i in range(1 if self._hash is not None else max(1, readers))
        ]
        for thread in self._threads:
            thread.start()

    def checked(self, size: int) -> bool:
        """True if the first ``size`` bytes were written in order, re-read and equal.

        False if not all covered (the caller then re-reads the slot in one pass). Raises
        :class:`ReadBackError` if the medium returned other bytes than were written.
        """
        self._stop()
        if self._error is not None:
            raise ReadBackError(self._error)
        return self.sequential and self._end == size and self._checked == size

    def digest(self) -> str | None:
        """sha256 of the bytes as re-read (only with ``hash_readback``)."""
        return None if self._hash is None else self._hash.hexdigest()

    @property
    def error(self) -> str | None:
        """Why the read-back failed, if it did."""
        return self._error

    def _fail(self, offset: int, message: str) -> None:
        with self._lock:
            if self._error is None or offset < self._error_at:
                self._error, self._error_at = message, offset

    def _stop(self) -> None:
        raise NotImplementedError
