"""The telemetry sink: windows, alerts and (optionally) sampled results, with identity on each.

Sits in front of the uplink (normally :class:`~appliance.telemetry.mqtt_sink.MqttSink`)::

    pipeline --record--> TelemetrySink --window/event/sampled result--> MqttSink --> broker

* **results** are added to the current window (one row appended on the frame path); they reach the
  uplink only if the per-frame policy says so (``off`` by default, ``sample`` at most
  ``results_per_min``, ``all``), and never once the day's byte budget is spent;
* **events** get the device's identity and an id and go out at once; ``alert: true`` marks
  those a person must act on (fallback, degraded, drift, budget exceeded, a refused uplink);
* **update outcomes** the update agent wrote to ``events.jsonl`` are read back from it (at
  most a second late) and sent as alerts (:mod:`~appliance.telemetry.update_events`);
* **windows**: every ``window_s`` (on the frame path when frames flow, else from a timer
  thread) the window is closed, the system sampled, drift checked, and a ``window`` message sent.

Every message carries ``id`` (unique, stable across re-sends: the ingester's idempotency key),
``device``, ``site`` and ``target``. The clock is a parameter so tests can run a simulated one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.drift import DriftDetector
from appliance.telemetry.identity import Identity
from appliance.telemetry.local_status import write_status
from appliance.telemetry.system import SystemSampler
from appliance.telemetry.update_events import UpdateEventTail, to_alert
from appliance.telemetry.window import WindowAggregator

log = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()
_ERROR_EVENTS = {"source_lost": "source", "uplink_error": "uplink"}
_ALERT_EVENTS = {"fallback", "degraded", "budget_exceeded", "drift", "update"}


class TelemetrySink:
    """Aggregates records into windows and forwards windows, alerts and sampled results."""

    def __init__(
        self,
        cfg: TelemetryConfig,
        identity: Identity,
        uplink: Any,
        *,
        references: dict[str, dict[str, float]] | None = None,
        primary_model: str | None = None,
        clock: Callable[[], float] = time.time,
        sampler: SystemSampler | None = None,
        timer: bool = True,
    ) -> None:
        cfg.check()
        self.cfg = cfg
        self.identity = identity
        self.uplink = uplink
        self.clock = clock
        self.references = references or {}
        self.sampler = sampler or SystemSampler(Path(cfg.data_dir))
        self.agg = WindowAggregator(primary_model)
        self.updates = UpdateEventTail(Path(cfg.data_dir))  # the update agent's outcomes
        self._per_frame = cfg.results != "off"
        self._drift: dict[str, DriftDetector] = {}
        self._drift_reason: str | None = None  # the last drift alert's, while it lasts
        self._lock = threading.Lock()
        self._boot = os.urandom(4).hex()
        self._seq = 0
        self.windows_sent = 0
        self.bytes_sent = 0
        self._day = int(clock() // 86400)
        self._day_bytes = 0
        self._budget_alerted = False
        self._next_result = 0.0
        self._start = clock()
        self._end = self._start + cfg.window_s
        self._closed = threading.Event()
        self._timer: threading.Thread | None = None
        if timer:
            self._timer = threading.Thread(target=self._tick, name="telemetry", daemon=True)
            self._timer.start()

    # --- the frame path ------------------------------------------------------------------

    def publish(self, record: dict[str, object]) -> None:
        kind = record.get("type")
        now = self.clock()
        if kind == "result":
            # the frame path: one row appended, one comparison (tools/bench_telemetry.py)
            with self._lock:
                self.agg.add(record)
            if self._per_frame and self._results_allowed(now):
                self._send(self._stamp(dict(record)))
            if now >= self._end:  # roll() checks again under the lock
                self.roll(now)
            return
        if kind == "event":
            event = self._stamp(dict(record))
            name = str(record.get("kind"))
            if name in _ERROR_EVENTS:
                with self._lock:
                    self.agg.error(_ERROR_EVENTS[name])
            if name in _ALERT_EVENTS:
                event["alert"] = True
            self._send(event)
            return
        self._send(self._stamp(dict(record)))

    def _results_allowed(self, now: float) -> bool:
        policy = self.cfg.results
        if policy == "off" or self._budget_spent():
            return False
        if policy == "all":
            return True
        if now < self._next_result:
            return False
        self._next_result = now + 60.0 / self.cfg.results_per_min
        return True

    # --- windows -------------------------------------------------------------------------

    def _tick(self) -> None:
        period = min(self.cfg.window_s / 4, 1.0)
        while not self._closed.wait(period):
            try:
                self.roll(self.clock())
            except Exception:  # a failing sensor read must not stop the windows
                log.exception("telemetry: closing a window failed (retrying)")

    def roll(self, now: float) -> int:
        """Forward new update outcomes; close every window that ended by ``now`` (count sent)."""
        self.forward_updates()
        sent = 0
        while True:
            with self._lock:
                if now < self._end:
                    return sent
                start, end = self._start, self._end
                summary = self.agg.close(start, end)
                self._start, self._end = end, end + self.cfg.window_s
            self._send_window(summary, start)
            sent += 1

    def _send_window(self, summary: dict[str, object], start: float) -> None:
        ident = self.identity
        window: dict[str, object] = {
            "type": "window",
            "id": f"{ident.device}:w:{round(start * 1000)}",
            "window_s": self.cfg.window_s,
            "slot": ident.slot,
            "version": ident.version,
            **summary,
            "system": self.sampler.sample(),
        }
        drift = self._check_drift(summary)
        if drift is not None:
            window["drift"] = drift
        self._send(self._stamp(window, keep_id=True))
        self.windows_sent += 1
        status = {"ts": window.get("ts_end"), "frames": window.get("frames"),
                  "model": window.get("model"), "drift": drift,
                  "min_samples": self.cfg.drift_min_samples,
                  "drift_reason": self._drift_reason}  # fmt: skip
        write_status(Path(self.cfg.data_dir), status)  # for the TUI Status screen

    def _check_drift(self, summary: dict[str, Any]) -> dict[str, object] | None:
        model = summary.get("model")
        reference = self.references.get(str(model)) if model else None
        if not reference:
            return None
        detector = self._drift.get(model)  # type: ignore[arg-type]
        if detector is None:
            detector = self._drift[model] = DriftDetector(  # type: ignore[index]
                reference,
                threshold=self.cfg.drift_psi,
                min_samples=self.cfg.drift_min_samples,
                windows=self.cfg.drift_windows,
            )
        reading = detector.add_window(summary["predictions"])
        if reading.alert is not None:
            psi_text = f"{reading.psi:.3f}" if reading.psi is not None else "n/a"
            side = "above" if reading.alert == "drift" else "back below"
            reason = (
                f"{model}: prediction PSI {psi_text} over the last {reading.windows} "
                f"windows ({reading.samples} predictions) is {side} the threshold "
                f"{reading.threshold:g}"
            )
            self._drift_reason = reason if reading.alert == "drift" else None
            self._send(
                self._stamp(
                    {
                        "type": "event",
                        "kind": reading.alert,
                        "alert": reading.alert == "drift",
                        "reason": reason,
                        "model": model,
                        **reading.to_json(),
                        "reference": reference,
                        "ts": round(self.clock(), 3),
                    }
                )
            )
        return reading.to_json()

    def forward_updates(self) -> int:
        """Send the update agent's new outcomes from events.jsonl as alerts (update_events.py)."""
        try:
            found = self.updates.poll()
        except OSError as exc:
            log.warning("telemetry: cannot read %s: %s", self.updates.events, exc)
            return 0
        for digest, event in found:
            message = to_alert(event)
            message["id"] = f"{self.identity.device}:u:{digest}"  # the same on a re-send
            self._send(self._stamp(message, keep_id=True))
        self.updates.commit()
        return len(found)

    # --- sending -------------------------------------------------------------------------

    def _stamp(self, message: dict[str, object], keep_id: bool = False) -> dict[str, object]:
        ident = self.identity
        with self._lock:
            self._seq += 1
            seq = self._seq
        if not keep_id:
            message["id"] = f"{ident.device}:{self._boot}:{seq}"
        message.update(device=ident.device, site=ident.site, target=ident.target, seq=seq)
        return message

    def _budget_spent(self) -> bool:
        return self._day_bytes > self.cfg.budget_mb_day * 1e6

    def _send(self, message: dict[str, object]) -> None:
        size = len(_ENCODER.encode(message))
        day = int(self.clock() // 86400)
        if day != self._day:
            self._day, self._day_bytes, self._budget_alerted = day, 0, False
        self._day_bytes += size
        self.bytes_sent += size
        self.uplink.publish(message)
        if self._budget_spent() and not self._budget_alerted:
            self._budget_alerted = True
            self.publish(
                {
                    "type": "event",
                    "kind": "budget_exceeded",
                    "reason": (
                        f"telemetry sent {self._day_bytes / 1e6:.2f} MB today, over the "
                        f"{self.cfg.budget_mb_day:g} MB budget: per-frame results stop until "
                        "midnight UTC; windows and alerts continue"
                    ),
                    "ts": round(self.clock(), 3),
                }
            )

    def close(self) -> None:
        """Send the last (partial) window, then close the uplink."""
        self._closed.set()
        if self._timer is not None:
            self._timer.join()
        now = self.clock()
        with self._lock:
            start, pending = self._start, self.agg.count
            summary = self.agg.close(start, max(now, start + 1e-3)) if pending else None
        if summary is not None:
            self._send_window(summary, start)
        self.uplink.close()
