"""Run the inference pipeline in a worker process and keep it alive.

The agent (a systemd ``Type=notify`` service with ``WatchdogSec``) runs :class:`Supervisor`:

* the worker target runs in a child process and calls ``ctx.heartbeat()`` per frame;
* WATCHDOG=1 goes to systemd only while supervision is healthy: the worker's heartbeat is
  fresh, or a new worker is inside its start-up grace, or a restart is waiting out its backoff.
  A worker that stops heart-beating is killed (SIGKILL) after ``heartbeat_timeout_s``, so
  ``WatchdogSec`` must exceed that plus one tick; a stuck *agent* stops pinging and systemd
  restarts it (and ``RuntimeWatchdogSec`` resets a stuck system);
* a hung or crashed worker is restarted with exponential backoff;
* after ``max_failures`` failures in a row the next mode is used: ``primary`` -> ``fallback``
  (the fallback model) -> ``degraded`` (frames pass through without a model), each step an
  alert event. A worker that stays healthy for ``stable_s`` clears its failure count.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.sharedctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from appliance.supervisor.sdnotify import Notifier

log = logging.getLogger(__name__)
MODES: tuple[str, ...] = ("primary", "fallback", "degraded")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Timing and limits of supervision (seconds)."""

    heartbeat_timeout_s: float = 15.0
    startup_grace_s: float = 120.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_failures: int = 3
    stable_s: float = 300.0
    stop_grace_s: float = 5.0
    tick_s: float = 0.1


class WorkerContext:
    """What a worker target gets: its mode, a stop event, heartbeat() and emit()."""

    def __init__(
        self,
        mode: str,
        heartbeat_value: Any,
        conn: multiprocessing.connection.Connection,
        stop: threading.Event,
    ) -> None:
        self.mode = mode
        self.stop = stop
        self._hb = heartbeat_value
        self._conn = conn

    def heartbeat(self, *_: object) -> None:
        """Tell the supervisor this worker is making progress (call it per frame)."""
        self._hb.value = time.monotonic()

    def emit(self, event: dict[str, object]) -> None:
        """Forward an event (e.g. a pipeline fallback) to the agent's event log."""
        try:
            self._conn.send_bytes(json.dumps(event, default=str).encode())
        except (OSError, ValueError):
            log.warning("cannot forward event %s", event)


WorkerTarget = Callable[[WorkerContext], None]


def _worker_main(
    target: WorkerTarget, mode: str, hb: Any, conn: multiprocessing.connection.Connection
) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when we stop
    ctx = WorkerContext(mode, hb, conn, stop)
    target(ctx)


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    heartbeat: Any
    events: multiprocessing.connection.Connection
    mode: str
    started: float


class Supervisor:
    """Keep one worker alive, walk down the modes on repeated failure, ping the watchdog."""

    def __init__(
        self,
        target: WorkerTarget,
        policy: Policy | None = None,
        *,
        notifier: Notifier | None = None,
        on_event: Callable[[dict[str, object]], None] | None = None,
        modes: Sequence[str] = MODES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not modes:
            raise ValueError("at least one mode")
        self.target = target
        self.policy = policy or Policy()
        self.notifier = notifier or Notifier()
        self.on_event = on_event
        self.modes = tuple(modes)
        self.clock = clock
        self.mode_index = 0
        self.failures = 0
        self.backoff = self.policy.backoff_initial_s
        self.restart_at = 0.0
        self.worker: _Worker | None = None
        self.events: list[dict[str, object]] = []
        self._last_ping = float("-inf")
        self._ctx = multiprocessing.get_context("fork")

    @property
    def mode(self) -> str:
        return self.modes[self.mode_index]

    def _event(
        self, kind: str, alert: bool = False, *, journal: int = logging.INFO, **fields: object
    ) -> None:
        event: dict[str, object] = {
            "type": "event",
            "kind": kind,
            "mode": self.mode,
            "alert": alert,
            "time": time.time(),
            **fields,
        }
        self.events.append(event)
        log.log(logging.WARNING if alert else journal, "%s %s", kind, fields)
        if self.on_event is not None:
            self.on_event(event)

    # --- worker life cycle ---------------------------------------------------------------

    def _start(self) -> None:
        hb = self._ctx.RawValue("d", 0.0)
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_worker_main,
            args=(self.target, self.mode, hb, writer),
            name=f"edgekiln-worker-{self.mode}",
            daemon=True,
        )
        process.start()
        writer.close()
        self.worker = _Worker(process, hb, reader, self.mode, self.clock())
        self._event("worker_started", pid=process.pid)
        self.notifier.status(f"worker {process.pid} running ({self.mode})")

    def _reap(self, reason: str, **fields: object) -> None:
        worker = self.worker
        assert worker is not None
        self._drain(worker)
        worker.process.join(timeout=self.policy.stop_grace_s)
        worker.events.close()
        self.worker = None
        self.failures += 1
        now = self.clock()
        delay = self.backoff
        self.backoff = min(self.backoff * 2, self.policy.backoff_max_s)
        self._event(
            f"worker_{reason}",
            alert=False,
            journal=logging.WARNING,  # the agent journals warnings: a technician sees why
            pid=worker.process.pid,
            exitcode=worker.process.exitcode,
            signal=_signal_name(worker.process.exitcode),
            failures=self.failures,
            restart_in_s=delay,
            **fields,
        )
        if self.failures >= self.policy.max_failures and self.mode_index < len(self.modes) - 1:
            previous = self.mode
            self.mode_index += 1
            self.failures = 0
            self.backoff = self.policy.backoff_initial_s
            delay = 0.0
            self._event(
                "mode_changed",
                alert=True,
                previous=previous,
                reason=f"{self.policy.max_failures} failures in mode {previous}",
            )
        self.restart_at = now + delay

    def _check(self, worker: _Worker, now: float) -> bool:
        """Handle a dead or hung worker; True while the worker is healthy."""
        if not worker.process.is_alive():
            code = worker.process.exitcode
            self._reap("crashed" if code != 0 else "exited")
            return False
        beat = float(worker.heartbeat.value)
        if beat > 0:
            silent = now - beat
            if silent > self.policy.heartbeat_timeout_s:
                worker.process.kill()  # a hung process may ignore SIGTERM
                self._reap("hung", silent_s=round(silent, 3))
                return False
            if self.failures and now - worker.started >= self.policy.stable_s:
                self.failures = 0
                self.backoff = self.policy.backoff_initial_s
        elif now - worker.started > self.policy.startup_grace_s:
            worker.process.kill()
            self._reap("hung", silent_s=round(now - worker.started, 3), during="startup")
            return False
        return True

    def _drain(self, worker: _Worker) -> None:
        try:
            while worker.events.poll():
                raw = worker.events.recv_bytes()
                event = json.loads(raw)
                if isinstance(event, dict):
                    event.setdefault("mode", worker.mode)
                    event["pid"] = worker.process.pid
                    self.events.append(event)
                    if self.on_event is not None:
                        self.on_event(event)
        except (EOFError, OSError, ValueError):
            pass

    # --- the loop ------------------------------------------------------------------------

    def step(self) -> None:
        """One supervision tick: start/check the worker, forward events, ping the watchdog."""
        now = self.clock()
        healthy = False
        if self.worker is None:
            if now >= self.restart_at:
                self._start()
            healthy = True  # waiting out a bounded backoff, or just started
        else:
            worker = self.worker
            healthy = self._check(worker, now)
            if healthy:
                self._drain(worker)
        interval = self.notifier.ping_interval_s
        if interval is None:
            return  # no watchdog configured for this service
        due = now - self._last_ping >= interval
        if healthy and due and self.notifier.watchdog():
            self._last_ping = now

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set, then stop the worker (SIGTERM, then SIGKILL)."""
        self.notifier.ready(f"supervising ({self.mode})")
        try:
            while not stop.is_set():
                self.step()
                stop.wait(self.policy.tick_s)
        finally:
            self.notifier.stopping()
            self.shutdown()

    def shutdown(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None:
            return
        if worker.process.is_alive() and worker.process.pid:
            os.kill(worker.process.pid, signal.SIGTERM)
            worker.process.join(self.policy.stop_grace_s)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._drain(worker)
        worker.events.close()


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return str(-exitcode)
