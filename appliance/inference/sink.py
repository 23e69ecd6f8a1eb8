"""Result sinks: JSON lines into a file on the data partition (MQTT comes later).

Whole lines are written to an O_APPEND file, so concurrent readers never see half a line
except after a power cut (the last line may then be torn; readers skip a bad last line).
Result lines are gathered for at most ``flush_every`` seconds (one write per batch instead of
one syscall per frame at high frame rates); events are written at once. fsync runs at most
once per ``fsync_every`` seconds: results are telemetry, not state.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol

import msgspec

_ENCODER = msgspec.json.Encoder()


class Sink(Protocol):
    """Where results and events go."""

    def publish(self, record: dict[str, object]) -> None: ...

    def close(self) -> None: ...


class NullSink:
    """Discard everything (self-test, benchmarks of the bare pipeline)."""

    def publish(self, record: dict[str, object]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """Append one JSON object per line to ``path``."""

    def __init__(
        self, path: Path | str, fsync_every: float = 1.0, flush_every: float = 0.05
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync_every = fsync_every
        self._flush_every = flush_every
        self._last_sync = self._last_flush = time.monotonic()
        self._buffer = bytearray()

    def publish(self, record: dict[str, object]) -> None:
        self._buffer += _ENCODER.encode(record)
        self._buffer += b"\n"
        now = time.monotonic()
        if record.get("type") == "event" or now - self._last_flush >= self._flush_every:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the gathered lines; fsync if the last one is older than ``fsync_every``."""
        now = time.monotonic() if now is None else now
        if self._buffer:
            os.write(self._fd, self._buffer)
            self._buffer.clear()
        self._last_flush = now
        if now - self._last_sync >= self._fsync_every:
            os.fsync(self._fd)
            self._last_sync = now

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
