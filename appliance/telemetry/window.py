"""The window aggregator: per-frame records in, one summary per window out.

``add(record)`` is on the frame path and only keeps a reference to the record (one list
append); the records are folded into the window's figures every ``FOLD_EVERY`` frames and at
``close()`` (once per window), which computes the percentiles, the prediction histogram and the
mean top-1 score. Folding in batches costs the same work as folding per frame but keeps it out
of the frame path's call overhead (tools/bench_telemetry.py). Pure: no clock, no I/O;
:class:`~appliance.telemetry.uplink.TelemetrySink` owns the timing.

Latency stages are those of the record (capture, pre, infer, post) plus ``total`` (their sum):
the publish stage is measured after the record left, so it is not in the window.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

STAGES = ("capture", "pre", "infer", "post", "total")
FOLD_EVERY = 4096  # records held before folding (bounds memory at high frame rates)


class WindowAggregator:
    """Collects one window's frames; ``close()`` returns its summary and starts the next."""

    def __init__(self, primary_model: str | None = None) -> None:
        self.primary_model = primary_model
        self.mode = "primary"
        self.model: str | None = None
        self.model_version: str | None = None
        self.backend: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._pending: list[dict[str, Any]] = []
        self.frames = 0
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.over_budget: Counter[str] = Counter()
        self.predictions: Counter[str] = Counter()
        self.top1: list[float] = []
        self.modes: Counter[str] = Counter()

    def add(self, record: dict[str, Any]) -> None:
        """One result record (the pipeline's per-frame dict); the record is not changed."""
        pending = self._pending
        pending.append(record)
        if len(pending) >= FOLD_EVERY:
            self._fold()

    @property
    def count(self) -> int:
        """Frames in the window so far."""
        return self.frames + len(self._pending)

    def _fold(self) -> None:
        """Fold the held records into the window's figures, column by column (C loops)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.frames += len(pending)
        timings = [m for m in (r.get("ms") for r in pending) if m]
        for stage in STAGES[:-1]:
            self.ms[stage].extend([m[stage] for m in timings if stage in m])
        self.ms["total"].extend([sum(m.values()) for m in timings])
        self.over_budget.update(s for r in pending for s in r.get("over_budget") or ())
        good = [r for r in pending if not r.get("degraded")]
        if len(good) < len(pending):
            failed = [r for r in pending if r.get("degraded")]
            self.errors["inference"] += sum(1 for r in failed if "error" in r)
            self.errors["degraded"] += sum(1 for r in failed if "error" not in r)
            self.modes["degraded"] += len(failed)
            self.mode = "degraded"
        if not good:
            return
        last = good[-1]
        if last.get("model") != self.model:
            self.model, self.model_version = last.get("model"), last.get("version")
            self.backend = last.get("backend")
        primary = self.primary_model
        on_primary = len(good) if primary is None else sum(r.get("model") == primary for r in good)
        self.modes["primary"] += on_primary
        self.modes["fallback"] += len(good) - on_primary
        if pending[-1] is last:
            self.mode = "primary" if primary in (None, last.get("model")) else "fallback"
        tops = [t[0] for t in (r.get("top") for r in good) if t]
        self.predictions.update([str(t["label"]) for t in tops])
        self.top1.extend([float(t["score"]) for t in tops])
        for r in good:
            if "top" not in r:
                for det in r.get("detections") or ():
                    self.predictions[str(det["label"])] += 1
                    self.top1.append(float(det["score"]))

    def error(self, kind: str) -> None:
        """An error that is not a frame (a lost camera, a refused uplink)."""
        self.errors[kind] += 1

    def close(self, start: float, end: float) -> dict[str, object]:
        """The window's summary (without identity and system fields); resets the counters."""
        self._fold()
        span = max(end - start, 1e-9)
        latency = {}
        for stage in STAGES:
            values = self.ms.get(stage)
            if values:
                a = np.asarray(values)
                p50, p95 = np.percentile(a, (50, 95))
                latency[stage] = {
                    "p50": round(float(p50), 3),
                    "p95": round(float(p95), 3),
                    "max": round(float(a.max()), 3),
                }
        summary: dict[str, object] = {
            "ts_start": round(start, 3),
            "ts_end": round(end, 3),
            "frames": self.frames,
            "fps": round(self.frames / span, 3),
            "latency_ms": latency,
            "errors": dict(+self.errors),
            "error_rate": round(sum(self.errors.values()) / self.frames, 5) if self.frames else 0.0,
            "over_budget": dict(+self.over_budget),
            "mode": self.modes.most_common(1)[0][0] if +self.modes else self.mode,
            "modes": dict(+self.modes),
            "model": self.model,
            "model_version": self.model_version,
            "backend": self.backend,
            "predictions": dict(self.predictions),
            "top1_mean": round(float(np.mean(self.top1)), 5) if self.top1 else None,
        }
        self._reset()
        return summary
