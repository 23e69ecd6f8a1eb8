"""Verify chunks on worker threads, hand the results on strictly in order.

sha256 (OpenSSL) and zstd decompression release the GIL on large buffers, so on a multi-core
device two chunks are verified at once while the caller reads the next one from the stream:
the bundle reader's own sha256 pass stops being the install's bottleneck. Results leave in
submission order only, so a chunk is never handed on before every chunk in front of it was
verified and handed on; the first failing chunk (in order) raises, and at most ``depth`` chunks
wait, so memory stays O(chunk x depth).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

# Two workers use both cores of the smallest targets; more only adds memory on the rest.
WORKERS = min(2, os.cpu_count() or 1)


class OrderedPipeline(Generic[T]):
    """Run calls on ``workers`` threads (inline when 0); collect their results in call order."""

    def __init__(self, workers: int = WORKERS, depth: int = 3) -> None:
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="bundle-verify") if workers > 0 else None
        )
        self._pending: deque[Future[T]] = deque()
        self._depth = max(1, depth)

    def submit(self, fn: Callable[..., T], *args: object) -> Iterator[T]:
        """Start ``fn(*args)``; yield the oldest result once more than ``depth`` are in flight.

        An exception of that oldest call is raised here, before any later result is yielded.
        """
        if self._pool is None:
            yield fn(*args)
            return
        self._pending.append(self._pool.submit(fn, *args))
        if len(self._pending) > self._depth:
            yield self._pending.popleft().result()

    def drain(self) -> Iterator[T]:
        """Yield every remaining result in order (raising the first failure)."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Cancel what has not started, wait for what has (its results are dropped)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
