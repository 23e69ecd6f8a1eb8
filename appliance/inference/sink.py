"""Result sinks: JSON lines into a file on the data partition, MQTT (mqtt_sink), or both.

Whole lines are written to an O_APPEND file, so concurrent readers never see half a line
except after a power cut (the last line may then be torn; readers skip a bad last line).

The frame path only encodes a record and appends it to an in-memory queue (a few us): a
background thread writes the gathered lines every ``flush_every`` seconds and fsyncs at most
once per ``fsync_every`` seconds (results are telemetry, not state), so a slow disk or an fsync
never stalls a frame. Events are written at once, in order with the results before them.

Size cap: past ``max_bytes`` the file is renamed to ``<name>.1`` (replacing the previous one)
and a new file started, so results never hold more than about twice ``max_bytes`` of data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

import msgspec

from appliance.fsutil import fsync_dir

log = logging.getLogger(__name__)
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


class TeeSink:
    """Publish every record to several sinks (e.g. the file on data and MQTT)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def publish(self, record: dict[str, object]) -> None:
        for sink in self.sinks:
            sink.publish(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class JsonlSink:
    """Append one JSON object per line to ``path``; writing happens on a background thread."""

    def __init__(
        self,
        path: Path | str,
        fsync_every: float = 1.0,
        flush_every: float = 0.05,
        max_bytes: int = 64 << 20,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._fsync_every = fsync_every
        self._flush_every = flush_every
        self._last_sync = time.monotonic()
        # deque.append / popleft are atomic: the frame path takes no lock.
        self._lines: deque[bytes] = deque()
        self._write_lock = threading.Lock()  # one writer at a time keeps lines in order
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._flusher, name=f"sink:{self.path.name}", daemon=True
        )
        self._thread.start()

    def publish(self, record: dict[str, object]) -> None:
        self._lines.append(_ENCODER.encode(record))
        if record.get("type") == "event":
            self.flush()

    def _flusher(self) -> None:
        last_error = -1e9
        while not self._closed.wait(self._flush_every):
            try:
                self.flush()
            except OSError as exc:  # a full or failing disk must not kill the pipeline
                if time.monotonic() - last_error >= 60:  # once a minute, not every 50 ms
                    last_error = time.monotonic()
                    log.warning("%s: cannot write results (retrying): %s", self.path, exc)

    def flush(self) -> None:
        """Write the gathered lines; fsync if the last fsync is older than ``fsync_every``."""
        with self._write_lock:
            if self._fd < 0:
                return
            lines = self._lines
            batch = [lines.popleft() for _ in range(len(lines))]
            if batch:
                batch.append(b"")
                data = b"\n".join(batch)
                os.write(self._fd, data)
                self._size += len(data)
                if self._size >= self.max_bytes:
                    self._rotate()
            now = time.monotonic()
            if now - self._last_sync >= self._fsync_every:
                os.fsync(self._fd)
                self._last_sync = now

    def _rotate(self) -> None:
        """``path`` -> ``path.1`` (replacing it); continue in a fresh ``path``. Lock held."""
        os.fsync(self._fd)
        os.close(self._fd)
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0
        fsync_dir(self.path.parent)

    def close(self) -> None:
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        with self._write_lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1
