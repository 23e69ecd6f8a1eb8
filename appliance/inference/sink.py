"""Result sinks: JSON lines into a file on the data partition (MQTT comes later).

One ``write`` per record on an O_APPEND file, so concurrent readers never see half a line
except after a power cut (the last line may then be torn; readers skip a bad last line).
fsync runs at most once per ``fsync_every`` seconds: results are telemetry, not state.
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

    def __init__(self, path: Path | str, fsync_every: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._fsync_every = fsync_every
        self._last_sync = time.monotonic()

    def publish(self, record: dict[str, object]) -> None:
        os.write(self._fd, _ENCODER.encode(record) + b"\n")
        now = time.monotonic()
        if now - self._last_sync >= self._fsync_every:
            os.fsync(self._fd)
            self._last_sync = now

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
