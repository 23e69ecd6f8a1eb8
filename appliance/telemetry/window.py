"""The window aggregator: per-frame records in, one summary per window out.

``add(record)`` is on the frame path and only appends a few numbers; ``close()`` (once per
window) computes the percentiles, the prediction histogram and the mean top-1 score. Pure: no
clock, no I/O; :class:`~appliance.telemetry.uplink.TelemetrySink` owns the timing.

Latency stages are those of the record (capture, pre, infer, post) plus ``total`` (their sum):
the publish stage is measured after the record left, so it is not in the window.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

STAGES = ("capture", "pre", "infer", "post", "total")


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
        self.frames = 0
        self.ms: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.over_budget: Counter[str] = Counter()
        self.predictions: Counter[str] = Counter()
        self.top1: list[float] = []
        self.modes: Counter[str] = Counter()

    def add(self, record: dict[str, Any]) -> None:
        """One result record (the pipeline's per-frame dict)."""
        self.frames += 1
        ms = record.get("ms")
        if isinstance(ms, dict):
            total = 0.0
            for stage, value in ms.items():
                self.ms[stage].append(value)
                total += value
            self.ms["total"].append(total)
        for stage in record.get("over_budget") or ():
            self.over_budget[stage] += 1
        if record.get("degraded"):
            self.mode = "degraded"
            self.errors["inference" if "error" in record else "degraded"] += 1
            self.modes["degraded"] += 1
            return
        model = record.get("model")
        if model != self.model:
            self.model, self.model_version = model, record.get("version")
            self.backend = record.get("backend")
        self.mode = "primary" if self.primary_model in (None, model) else "fallback"
        self.modes[self.mode] += 1
        top = record.get("top")
        if top:
            first = top[0]
            self.predictions[str(first["label"])] += 1
            self.top1.append(float(first["score"]))
        else:
            for det in record.get("detections") or ():
                self.predictions[str(det["label"])] += 1
                self.top1.append(float(det["score"]))

    def error(self, kind: str) -> None:
        """An error that is not a frame (a lost camera, a refused uplink)."""
        self.errors[kind] += 1

    def close(self, start: float, end: float) -> dict[str, object]:
        """The window's summary (without identity and system fields); resets the counters."""
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
            "errors": dict(self.errors),
            "error_rate": round(sum(self.errors.values()) / self.frames, 5) if self.frames else 0.0,
            "over_budget": dict(self.over_budget),
            "mode": self.modes.most_common(1)[0][0] if self.modes else self.mode,
            "modes": dict(self.modes),
            "model": self.model,
            "model_version": self.model_version,
            "backend": self.backend,
            "predictions": dict(self.predictions),
            "top1_mean": round(float(np.mean(self.top1)), 5) if self.top1 else None,
        }
        self._reset()
        return summary
