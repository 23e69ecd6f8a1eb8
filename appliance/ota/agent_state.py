"""The update agent's state on data: what it polled, fetched, installed and how it ended.

One JSON file, ``DATA/edgekiln/update-agent-v1.json`` (format version in the name:
docs/decisions.md §10), replaced atomically (:mod:`appliance.fsutil`) so a power cut leaves
the old or the new state, never a torn one. A damaged file is logged and replaced by a fresh
state: it holds no security decision (the anti-rollback floor lives in ``appliance/state.py``),
only bookkeeping and the list of releases that rolled back here.

Events go to ``DATA/edgekiln/events.jsonl`` (the supervisor's event log, in its shape:
``{"type": "event", "kind": "update.<step>", "alert", "time", ...}``), appended and fsynced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from appliance.fsutil import atomic_write_bytes
from appliance.ota.errors import OtaError

log = logging.getLogger(__name__)
STATE_NAME = "update-agent-v1.json"
LOCK_NAME = "update.lock"
BACKOFF_BASE_S = 60.0
BACKOFF_MAX_S = 6 * 3600.0


class AgentBusyError(OtaError):
    """Another ``appliance update run`` holds the lock on data."""

    exit_code = 75  # EX_TEMPFAIL


class Pending(msgspec.Struct, forbid_unknown_fields=True):
    """The release being downloaded or installed."""

    version: str
    kind: str
    path: str
    sha256: str
    length: int
    image_sha256: str


class Trying(msgspec.Struct, forbid_unknown_fields=True):
    """An install the loader was told to try once, waiting for the health gate's commit."""

    version: str
    slot: str
    image_sha256: str
    installed_at: float


class AgentState(msgspec.Struct, forbid_unknown_fields=True):
    """Everything ``appliance update status`` shows, and the backoff."""

    format: int = 1
    channel: str | None = None
    last_poll: float | None = None
    last_outcome: str | None = None  # the last event name, e.g. "update.up-to-date"
    last_detail: str | None = None
    pending: Pending | None = None
    bytes_downloaded: int = 0  # of the pending release, over all runs
    trying: Trying | None = None
    failures: int = 0
    next_attempt: float = 0.0
    rolled_back: list[str] = msgspec.field(default_factory=list)  # image sha256 values
    active_key: str | None = None  # "<slot>:<version>" the cached digest below belongs to
    active_sha256: str | None = None


def state_path(data_dir: Path) -> Path:
    """Where the agent keeps its state."""
    return Path(data_dir) / "edgekiln" / STATE_NAME


def load(data_dir: Path) -> AgentState:
    """The saved state; a missing or damaged file is a fresh one (logged)."""
    path = state_path(data_dir)
    try:
        return msgspec.json.decode(path.read_bytes(), type=AgentState)
    except FileNotFoundError:
        return AgentState()
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("%s is unreadable (%s); starting from a fresh update state", path, exc)
        return AgentState()


def save(data_dir: Path, state: AgentState) -> None:
    """Replace the state file atomically and durably."""
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, msgspec.json.encode(state) + b"\n")


def backoff_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures: exponential, "equal jitter"."""
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, failures - 1))
    jitter = (rng or random.Random()).uniform(0, cap / 2)  # noqa: S311 - spreads timers only
    return float(cap / 2 + jitter)


@contextlib.contextmanager
def run_lock(data_dir: Path) -> Iterator[None]:
    """Hold ``DATA/edgekiln/update.lock`` (flock) or raise :class:`AgentBusyError`."""
    path = Path(data_dir) / "edgekiln" / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentBusyError(
                f"another update run holds {path}; this one does nothing (the timer runs again)"
            ) from None
        yield
    finally:
        os.close(fd)  # closing drops the lock (also when the process dies)


class EventLog:
    """Appends ``update.*`` events to ``events.jsonl`` (fsynced: events are rare)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.events: list[dict[str, Any]] = []

    def __call__(self, name: str, *, alert: bool = False, **details: Any) -> None:
        # The supervisor's shape (appliance/supervisor/supervisor.py), so readers of the log
        # (TUI, telemetry) see one format.
        event = {**details, "type": "event", "kind": name, "alert": alert,
                 "time": round(time.time(), 3)}  # fmt: skip
        self.events.append(event)
        log.info("%s %s", name, json.dumps(details, default=str))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as handle:
                handle.write(json.dumps(event, default=str, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # the event log must never stop the update
            log.warning("cannot append to %s: %s", self.path, exc)
