"""The update agent's outcomes on the uplink: a tail of ``events.jsonl`` by the telemetry process.

The update agent (appliance/ota) is a separate, short-lived process started by a timer, and
some outcomes are only known after a reboot (``update.committed``, ``update.rolled-back``).
It already appends every event to ``DATA/edgekiln/events.jsonl`` and fsyncs it before going
on, so the telemetry process reads the new ``update.*`` lines from there instead of the agent
calling into telemetry: nothing in appliance/ota changes, an outcome written while no pipeline
ran (or while the broker was away) still goes out, and the one MQTT connection and its disk
buffer keep a single writer.

Where it got to is kept in ``DATA/edgekiln/telemetry-events.json`` (inode and byte offset,
replaced atomically after the messages were handed to the uplink). A crash between the two
sends them again with the same ids (a hash of the line), which the ingester stores once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

CURSOR = "edgekiln/telemetry-events.json"
EVENTS = "edgekiln/events.jsonl"
FIRST_READ_MAX = 1 << 20  # a first start reads at most the last MiB of history
# progress steps of every poll: no person acts on them, the fleet view needs only outcomes
PROGRESS = frozenset(
    {"update.polled", "update.up-to-date", "update.downloading", "update.downloaded",
     "update.installing", "update.busy", "update.dropped-download", "update.backoff",
     "update.outside-window", "update.not-in-rollout", "update.on-trial"}
)  # fmt: skip


class UpdateEventTail:
    """New outcome lines (``update.*``) of ``events.jsonl`` since the last :meth:`commit`."""

    def __init__(self, data_dir: Path) -> None:
        self.events = Path(data_dir) / EVENTS
        self.cursor_path = Path(data_dir) / CURSOR
        self._ino, self._offset = self._load_cursor()
        self._pending: tuple[int, int] | None = None

    def _load_cursor(self) -> tuple[int, int]:
        try:
            doc = json.loads(self.cursor_path.read_bytes())
            return int(doc["ino"]), int(doc["offset"])
        except FileNotFoundError:
            return -1, -1
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s unreadable (%s): reading the log's last MiB", self.cursor_path, exc)
            return -1, -1

    def poll(self) -> list[tuple[str, dict[str, Any]]]:
        """``(line digest, event)`` for each new outcome; call :meth:`commit` once sent."""
        try:
            st = os.stat(self.events)
        except FileNotFoundError:
            return []
        start = self._offset
        fresh = st.st_ino != self._ino or st.st_size < start or start < 0
        if fresh:  # first start, or the log was replaced or truncated
            start = max(0, st.st_size - FIRST_READ_MAX)
        if st.st_size == start:
            return []
        with self.events.open("rb") as handle:
            handle.seek(start)
            chunk = handle.read(st.st_size - start)
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
        lines = chunk[:end].split(b"\n")
        if fresh and start > 0:
            lines = lines[1:]  # reading from the middle: the first line is cut
        out = []
        for line in lines:
            event = _outcome(line)
            if event is not None:
                out.append((hashlib.sha256(line).hexdigest()[:16], event))
        self._pending = (st.st_ino, start + end)
        return out

    def commit(self) -> None:
        """Remember that what the last :meth:`poll` returned was handed to the uplink."""
        if self._pending is None or self._pending == (self._ino, self._offset):
            return
        self._ino, self._offset = self._pending
        try:
            self.cursor_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(
                self.cursor_path, json.dumps({"ino": self._ino, "offset": self._offset}).encode()
            )
        except OSError as exc:  # sent again after a restart; the ingester stores it once
            log.warning("cannot write %s: %s", self.cursor_path, exc)


def _outcome(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    kind = str(event.get("kind", ""))
    if not kind.startswith("update.") or kind in PROGRESS:
        return None
    return event


def to_alert(event: dict[str, Any]) -> dict[str, Any]:
    """The uplink message for one agent event (its own name, details and time kept)."""
    reason = event.get("reason") or event.get("detail") or ""
    message = {k: v for k, v in event.items() if k not in ("type", "alert", "time", "seq")}
    message.update(type="event", alert=True, reason=str(reason), source="update-agent")
    message["ts"] = event.get("time", event.get("ts"))
    return message
