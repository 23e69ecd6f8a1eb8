"""The window aggregator: per-frame records in, one summary per window out.

``add(record)`` is on the frame path. It keeps no reference to the record and creates no
object that outlives the call: the frame's four stage times go into a flat ``array('d')`` (one
``extend`` of the tuple ``itemgetter`` makes in C), its model, top-1 label and score onto three
lists of existing objects; the record is freed as soon as the pipeline drops it. Holding the
records themselves (as this module once did, to fold them in batches) kept about six objects
the garbage collector tracks alive per frame until the window closed, and the fold re-read
each record's dicts from cold memory.

Every ``HOLD`` frames (and at ``close()``) the lists are folded (C loops): the stage times into
a float64 array with their total (40 bytes a frame: exact percentiles at close), the labels
into a counter, the scores into a running sum, so memory stays bounded at any frame rate.
``close()`` computes the percentiles in one numpy call. Pure: no clock, no I/O;
:class:`~appliance.telemetry.uplink.TelemetrySink` owns the timing. Costs:
tools/bench_telemetry.py, appliance/telemetry/README.md.

Latency stages are those of the record (capture, pre, infer, post) plus ``total`` (their sum):
the publish stage is measured after the record left, so it is not in the window.
"""

from __future__ import annotations

from array import array
from collections import Counter
from operator import itemgetter
from typing import Any

import numpy as np

STAGES = ("capture", "pre", "infer", "post", "total")
MODES = ("primary", "fallback", "degraded")  # a window's mode: the most frames (ties: first)
HOLD = 4096  # frames held in lists before folding into arrays (bounds memory at any fps)
_TIMES = itemgetter(*STAGES[:-1])


def _by_name(counts: Counter[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label, n in counts.items():
        out[str(label)] = out.get(str(label), 0) + n
    return out


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
        self._times = array("d")  # the four stage ms of each frame that has them, flat
        self._models: list[Any] = []  # the model of each good frame
        self._labels: list[Any] = []  # top-1 label of each prediction (detections: each)
        self._scores: list[Any] = []
        self._folded = 0  # frames folded (good and degraded)
        self._failed = 0  # degraded frames not folded yet
        self._failed_at = -1  # len(_models) at the last degraded frame (-1: none since a fold)
        self._last: dict[str, Any] | None = None  # the last good record (its model's names)
        self._arrays: list[np.ndarray] = []  # folded stage times: (n, 5) with the total
        self._odd: list[dict[str, float]] = []  # ms of degraded frames and of odd records
        self._score_sum = 0.0
        self._score_n = 0
        self.predictions: Counter[Any] = Counter()  # by label as the model gave it
        self.errors: Counter[str] = Counter()
        self.over_budget: Counter[str] = Counter()
        self.modes: Counter[str] = Counter()

    # --- the frame path ------------------------------------------------------------------

    def add(self, record: dict[str, Any]) -> None:
        """One result record (the pipeline's per-frame dict); neither changed nor kept."""
        if record.get("degraded"):
            self._add_failed(record)
            return
        try:  # a classifier's frame: read everything first, then append (no half frame)
            first = record["top"][0]
            times = _TIMES(record["ms"])
            model, label, score = record["model"], first["label"], first["score"]
        except (KeyError, IndexError, TypeError):  # a detector's, or a record missing a field
            self._add_other(record)
        else:
            self._times.extend(times)
            self._models.append(model)
            self._labels.append(label)
            self._scores.append(score)
        self._last = record
        if "over_budget" in record:  # the stages over their budget (a list)
            self.over_budget.update(list(record["over_budget"] or ()))
        if len(self._models) >= HOLD:
            self._fold()

    def _add_other(self, record: dict[str, Any]) -> None:
        ms = record.get("ms") or {}
        try:
            self._times.extend(_TIMES(ms))
        except KeyError:
            if ms:
                self._odd.append(ms)
        found = record["top"][:1] if record.get("top") else record.get("detections") or ()
        for det in found:
            self._labels.append(det["label"])
            self._scores.append(det["score"])
        self._models.append(record.get("model"))

    def _add_failed(self, record: dict[str, Any]) -> None:
        self.errors["inference" if "error" in record else "degraded"] += 1
        self._failed += 1
        self._failed_at = len(self._models)
        ms = record.get("ms")
        if ms:
            self._odd.append(ms)
        if record.get("over_budget"):
            self.over_budget.update(list(record["over_budget"]))

    # --- folding and closing --------------------------------------------------------------

    def _fold(self) -> None:
        """Move the held lists into arrays and counters (C loops)."""
        models, self._models = self._models, []
        last_failed, self._failed_at = self._failed_at == len(models), -1
        if self._failed:
            self.modes["degraded"] += self._failed
            self._folded += self._failed
            self._failed = 0
            self.mode = "degraded"
        if self._times:
            times = np.frombuffer(self._times, dtype=np.float64).reshape(-1, 4)
            self._arrays.append(np.column_stack((times, times.sum(axis=1))))  # a copy
            self._times = array("d")
        if self._labels:
            self.predictions.update(self._labels)
            self._score_sum += sum(self._scores)
            self._score_n += len(self._scores)
            self._labels, self._scores = [], []
        if not models:
            return
        frames = len(models)
        self._folded += frames
        primary = self.primary_model
        on_primary = frames if primary is None else models.count(primary)
        self.modes["primary"] += on_primary
        self.modes["fallback"] += frames - on_primary
        last = self._last
        if last is not None:
            if last.get("model") != self.model:
                self.model, self.model_version = last.get("model"), last.get("version")
                self.backend = last.get("backend")
            if not last_failed:
                self.mode = "primary" if primary in (None, last.get("model")) else "fallback"

    @property
    def count(self) -> int:
        """Frames in the window so far."""
        return self._folded + self._failed + len(self._models)

    def error(self, kind: str) -> None:
        """An error that is not a frame (a lost camera, a refused uplink)."""
        self.errors[kind] += 1

    def _latency(self) -> dict[str, dict[str, float]]:
        if not self._odd:  # every frame had every stage: one array, one percentile call
            if not self._arrays:
                return {}
            a = self._arrays[0] if len(self._arrays) == 1 else np.concatenate(self._arrays)
            p50, p95 = np.percentile(a, (50, 95), axis=0)
            top = a.max(axis=0)
            return {
                stage: {"p50": round(float(p50[i]), 3), "p95": round(float(p95[i]), 3),
                        "max": round(float(top[i]), 3)}
                for i, stage in enumerate(STAGES)
            }  # fmt: skip
        columns: list[list[np.ndarray]] = [[] for _ in STAGES]
        for folded in self._arrays:
            for i in range(len(STAGES)):
                columns[i].append(folded[:, i])
        if self._odd:  # failed frames (capture only) and records missing a stage
            for i, stage in enumerate(STAGES[:-1]):
                columns[i].append(np.array([m[stage] for m in self._odd if stage in m], float))
            columns[-1].append(np.array([sum(m.values()) for m in self._odd], float))
        latency = {}
        for stage, parts in zip(STAGES, columns, strict=True):
            values = np.concatenate(parts) if parts else np.empty(0)
            if values.size:
                p50, p95 = np.percentile(values, (50, 95))
                latency[stage] = {
                    "p50": round(float(p50), 3),
                    "p95": round(float(p95), 3),
                    "max": round(float(values.max()), 3),
                }
        return latency

    def close(self, start: float, end: float) -> dict[str, object]:
        """The window's summary (without identity and system fields); resets the counters."""
        self._fold()
        frames = self._folded
        span = max(end - start, 1e-9)
        summary: dict[str, object] = {
            "ts_start": round(start, 3),
            "ts_end": round(end, 3),
            "frames": frames,
            "fps": round(frames / span, 3),
            "latency_ms": self._latency(),
            "errors": dict(+self.errors),
            "error_rate": round(sum(self.errors.values()) / frames, 5) if frames else 0.0,
            "over_budget": dict(+self.over_budget),
            "mode": max(MODES, key=self.modes.__getitem__) if +self.modes else self.mode,
            "modes": dict(+self.modes),
            "model": self.model,
            "model_version": self.model_version,
            "backend": self.backend,
            "predictions": _by_name(self.predictions),
            "top1_mean": round(self._score_sum / self._score_n, 5) if self._score_n else None,
        }
        self._reset()
        return summary
