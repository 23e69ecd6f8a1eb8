"""The base check of a delta apply: the active slot's first ``size`` bytes vs the signed sha256.

Run before anything is written (:meth:`~appliance.bundle.delta_apply.BaseSlot.check`), or, on a
multi-core device, on a helper thread while the apply rebuilds and writes chunks that are each
verified against their own signed digests (``start_check``); the slot is tried only after the
check passed (docs/decisions.md §34). Reads run ahead of the hash on one more thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Iterator

from appliance.bundle.delta import DeltaBaseError

CHECK_BLOCK = 4 << 20  # bytes per read of the base check (two buffers: one read, one hashed)
BACKGROUND_BLOCK = 256 << 10  # the same beside a running apply (its buffers count to peak RSS)


def hash_base(
    fd: int, path: str, size: int, sha256: str, block: int, stop: threading.Event | None
) -> DeltaBaseError | None:
    """The refusal if the first ``size`` bytes of ``fd`` do not hash to ``sha256``, else None."""
    digest = hashlib.sha256()
    offset = 0
    for view in _read_ahead(fd, size, block):
        if stop is not None and stop.is_set():
            return DeltaBaseError(f"the check of the base {path} was stopped before it ended")
        digest.update(view)
        offset += len(view)
    if offset != size or digest.hexdigest() != sha256:
        return DeltaBaseError(
            f"delta applies to a base image of {size} bytes with sha256 {sha256[:16]}..., "
            f"but {path} holds {offset} bytes with sha256 {digest.hexdigest()[:16]}...: "
            "this device runs another version; install the full bundle instead"
        )
    return None


class BackgroundCheck:
    """:func:`hash_base` on a helper thread (sha256 and pread release the GIL)."""

    def __init__(self, fd: int, path: str, size: int, sha256: str) -> None:
        from appliance.bundle.ordered import release_delta_memory, share_malloc_arena

        share_malloc_arena()  # before the first thread: glibc fixes its arena limit then
        release_delta_memory()  # the read buffers are mapped, and unmapped when done
        self.wanted = (size, sha256)
        self._stop = threading.Event()
        self._outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                error = hash_base(fd, path, size, sha256, BACKGROUND_BLOCK, self._stop)
            except BaseException as exc:  # an I/O error reading the base: the caller's
                self._outcome.append(exc)
            else:
                self._outcome.append(error)

        self._thread = threading.Thread(target=run, name="base-check", daemon=True)
        self._thread.start()

    def result(self) -> BaseException | None:
        """Wait for the check: the error to raise, or None (the base is the signed one)."""
        self._thread.join()
        return self._outcome[0]

    def cancel(self) -> None:
        """Stop at the next block and wait for the thread (it reads the slot's descriptor)."""
        self._stop.set()
        self._thread.join()


def _read_ahead(fd: int, size: int, block: int = CHECK_BLOCK) -> Iterator[memoryview]:
    """The first ``size`` bytes of ``fd`` in blocks, the next read while the caller hashes.

    Stops early where the file ends. Two reused buffers (no allocation per block); a block is
    overwritten only after the caller asked for the next one, so it is not used meanwhile.
    """
    with contextlib.suppress(OSError):  # advice only (a pipe or an odd file system)
        os.posix_fadvise(fd, 0, size, os.POSIX_FADV_SEQUENTIAL)
    buffers = [memoryview(bytearray(min(block, max(size, 1)))) for _ in range(2)]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[int, int] | BaseException] = queue.SimpleQueue()
    stop = threading.Event()

    def reader() -> None:
        offset = 0
        try:
            while offset < size and not stop.is_set():
                i = free.get()
                if i < 0:
                    return
                view = buffers[i][: min(len(buffers[i]), size - offset)]
                got = os.preadv(fd, [view], offset)
                full.put((i, got))
                if got <= 0:
                    return
                offset += got
            full.put((0, 0))
        except BaseException as exc:  # handed to the caller
            full.put(exc)

    for i in range(len(buffers)):
        free.put(i)
    thread = threading.Thread(target=reader, name="base-check-read", daemon=True)
    thread.start()
    try:
        while True:
            item = full.get()
            if isinstance(item, BaseException):
                raise item
            i, got = item
            if got <= 0:
                return
            yield buffers[i][:got]
            free.put(i)
    finally:
        stop.set()
        free.put(-1)
        thread.join()
