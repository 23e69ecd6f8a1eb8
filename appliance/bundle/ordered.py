"""Verify chunks on worker threads, hand the results on strictly in order.

sha256 (OpenSSL) and zstd decompression release the GIL on large buffers, so on a multi-core
device two chunks are verified at once while the caller reads the next one from the stream:
the bundle reader's own sha256 pass stops being the install's bottleneck. Results leave in
submission order only, so a chunk is never handed on before every chunk in front of it was
verified and handed on; the first failing chunk (in order) raises, and at most ``depth`` chunks
wait, so memory stays O(chunk x depth).
"""

from __future__ import annotations

import functools
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")

# Two workers use both cores of the smallest targets; more only adds memory on the rest.
WORKERS = min(2, os.cpu_count() or 1)
M_ARENA_MAX = -8  # glibc mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
CHUNK_MMAP_THRESHOLD = 8 << 20  # chunk buffers below this come from the heap, reused
CHUNK_TRIM_THRESHOLD = 16 << 20  # free heap kept before it is returned to the kernel


@functools.cache
def share_malloc_arena() -> None:
    """Ask glibc to give threads started from now on one shared malloc arena (best effort).

    Chunk-sized buffers are allocated on a worker and freed on the writer thread; with an arena
    per thread each keeps its own freed megabytes, which cost a delta apply ~6 MiB of peak RSS
    (67 -> 61 MiB on the upgrade pair). The threads here are GIL-bound Python plus C calls on
    large buffers, so one arena costs no measurable time. It holds for the rest of the process
    (glibc fixes its arena limit the first time it needs one); an explicit MALLOC_ARENA_MAX in
    the environment wins. A no-op where mallopt is missing. The reader's threads call it first.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 1)


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's mallopt, or None (not Linux/glibc)."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc-like: nothing to tune
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


@functools.cache
def reuse_chunk_memory() -> None:
    """Keep freed chunk-sized buffers in the heap instead of unmapping them (best effort).

    Each 1 MiB chunk (and, for zstd, its decompressed image) is a fresh allocation. glibc's
    dynamic thresholds still let most of them be mapped and unmapped, or the heap top be
    trimmed, so the kernel zero-fills and faults in the pages again: a 1 GiB zstd install
    took ~130 000 minor faults and 0.6 s of system time; with fixed thresholds ~12 000 and
    0.3 s, for +1.3 MiB of peak RSS (measured, tools/bench_install.py). It holds for the rest
    of the process; MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment win.
    """
    if {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, CHUNK_MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, CHUNK_TRIM_THRESHOLD)


DELTA_MMAP_THRESHOLD = 256 << 10  # delta buffers at least this large go back to the kernel


@functools.cache
def release_delta_memory() -> None:
    """Fix glibc's mmap threshold at 256 KiB for a delta apply (best effort).

    A delta's buffers vary in size (wire chunks, bodies of up to two chunks, rebuilt chunks):
    with glibc's dynamic threshold they all came from the heap after the first 1 MiB free, and
    its fragments kept ~4.5 MiB more RSS (67.1 -> 62.1 MiB on a numpy-upgrade pair, measured
    with ``appliance install``). Mapped and unmapped per chunk, the peak is what is live.
    It holds for the rest of the process; MALLOC_MMAP_THRESHOLD_ in the environment wins.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, DELTA_MMAP_THRESHOLD)


class OrderedPipeline(Generic[T]):
    """Run calls on ``workers`` threads (inline when 0); collect their results in call order."""

    def __init__(self, workers: int = WORKERS, depth: int = 3) -> None:
        if workers > 0:
            share_malloc_arena()
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
