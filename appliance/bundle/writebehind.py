"""Write-behind: verified chunks go to the sink from one helper thread while the next is hashed.

Hashing (OpenSSL), decompression (zstd) and ``os.pwrite`` all release the GIL, so on two cores
writing chunk N overlaps verifying chunk N+1. Writes stay strictly in order, at most ``depth``
verified chunks wait in memory (O(chunk) still), and only verified chunks are ever queued.
A sink that already writes on its own thread (``writes_behind = True``, the installer's
O_DIRECT sink: it only copies each chunk into a region buffer) is called directly instead
(:func:`writer_for`): one thread hand-off and ``depth`` chunk buffers fewer.
"""

from __future__ import annotations

import queue
import threading

from appliance.bundle.ordered import share_malloc_arena
from appliance.bundle.sink import Sink

_STOP = None


class Inline:
    """The :class:`WriteBehind` interface, calling ``sink.write`` on the caller's thread."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, offset: int, data: bytes) -> None:
        """Hand a verified chunk to the sink now."""
        self._sink.write(offset, data)

    def close(self) -> None:
        """Nothing waits here."""

    def abandon(self) -> None:
        """Nothing waits here."""


def writer_for(sink: Sink) -> WriteBehind | Inline:
    """:class:`Inline` for a sink that writes behind by itself, else a :class:`WriteBehind`."""
    return Inline(sink) if getattr(sink, "writes_behind", False) else WriteBehind(sink)


class WriteBehind:
    """Forwards ``write`` calls to ``sink`` in order from one background thread."""

    def __init__(self, sink: Sink, depth: int = 2) -> None:
        self._sink = sink
        self._queue: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        share_malloc_arena()  # before the first thread: see there
        self._thread = threading.Thread(target=self._run, name="bundle-write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if self._error is None:  # after a failure, drain without writing
                try:
                    self._sink.write(*item)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def write(self, offset: int, data: bytes) -> None:
        """Queue a verified chunk (blocks while ``depth`` chunks wait); raise an earlier failure."""
        if self._error is not None:
            raise self._error
        self._queue.put((offset, data))

    def close(self) -> None:
        """Wait until every queued chunk was written; raise the sink's error if one failed."""
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def abandon(self) -> None:
        """Stop after the queued chunks (all verified) and ignore write errors: the caller fails."""
        self._queue.put(_STOP)
        self._thread.join()
