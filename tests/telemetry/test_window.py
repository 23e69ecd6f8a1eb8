"""WindowAggregator: every figure of a window against a plain per-record computation.

The aggregator keeps columns, not records, and folds them every ``HOLD`` frames; the oracle
here reads the records one by one. Generated streams mix good frames on the primary and the
fallback model, degraded frames (with and without an error), detector records (detections, no
``top``), stages over budget, and windows longer than ``HOLD`` (so folding happens mid-window).
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.telemetry import window
from appliance.telemetry.window import STAGES, WindowAggregator

PRIMARY = "inspect-primary"


def oracle(records: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    ms: dict[str, list[float]] = {s: [] for s in STAGES}
    errors: Counter[str] = Counter()
    over: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    predictions: Counter[str] = Counter()
    scores: list[float] = []
    model = None
    for r in records:
        m = r.get("ms") or {}
        for stage in STAGES[:-1]:
            if stage in m:
                ms[stage].append(m[stage])
        if m:
            ms["total"].append(sum(m.values()))
        over.update(r.get("over_budget") or ())
        if r.get("degraded"):
            errors["inference" if "error" in r else "degraded"] += 1
            modes["degraded"] += 1
            continue
        model = r["model"]
        modes["primary" if model == PRIMARY else "fallback"] += 1
        found = r["top"][:1] if r.get("top") else r.get("detections") or []
        for t in found:
            predictions[str(t["label"])] += 1
            scores.append(t["score"])
    latency = {
        s: {"p50": round(float(np.percentile(v, 50)), 3),
            "p95": round(float(np.percentile(v, 95)), 3), "max": round(max(v), 3)}
        for s, v in ms.items() if v
    }  # fmt: skip
    n = len(records)
    return {
        "ts_start": round(start, 3), "ts_end": round(end, 3), "frames": n,
        "fps": round(n / (end - start), 3), "latency_ms": latency, "errors": dict(errors),
        "error_rate": round(sum(errors.values()) / n, 5) if n else 0.0,
        "over_budget": dict(over),
        "mode": max(window.MODES, key=modes.__getitem__) if modes else "primary",
        "modes": dict(modes), "model": model, "predictions": dict(predictions),
        "top1_mean": round(sum(scores) / len(scores), 5) if scores else None,
    }  # fmt: skip


def _ms(draw: st.DrawFn, stages: tuple[str, ...]) -> dict[str, float]:
    return {s: draw(st.floats(0.0, 50.0, allow_nan=False)) for s in stages}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["good", "good", "good", "fallback", "detector", "failed"]))
    if kind == "failed":
        r: dict[str, Any] = {"type": "result", "degraded": True,
                             "ms": _ms(draw, ("capture",))}  # fmt: skip
        if draw(st.booleans()):
            r["error"] = "boom"
        return r
    label = draw(st.sampled_from(["ok", "scratch", "crack", 3]))
    score = draw(st.floats(0.0, 1.0))
    r = {"type": "result", "degraded": False, "version": "1.0.0", "backend": "onnxruntime",
         "model": PRIMARY if kind != "fallback" else "inspect-fallback",
         "ms": _ms(draw, STAGES[:-1])}  # fmt: skip
    if kind == "detector":
        r["detections"] = [{"label": label, "score": score}] * draw(st.integers(0, 3))
    else:
        r["top"] = [{"label": label, "score": score}, {"label": "x", "score": 0.0}]
    if draw(st.integers(0, 9)) == 0:
        r["over_budget"] = draw(st.lists(st.sampled_from(["pre", "infer", "post"]), max_size=2))
    return r


def check(summary: dict[str, Any], want: dict[str, Any]) -> None:
    mean = want.pop("top1_mean")
    assert summary["top1_mean"] == (None if mean is None else pytest.approx(mean, abs=2e-5))
    summary = {k: v for k, v in summary.items() if k in want}
    summary.pop("top1_mean", None)
    assert summary == want


@settings(max_examples=150, deadline=None)
@given(st.lists(records(), max_size=60), st.integers(1, 7))
def test_every_figure_matches_a_per_record_computation(
    stream: list[dict[str, Any]], hold: int
) -> None:
    held = window.HOLD
    window.HOLD = hold  # fold every few frames: the folding joins windows' parts correctly
    try:
        agg = WindowAggregator(PRIMARY)
        for r in stream:
            agg.add(r)
        assert agg.count == len(stream)
        summary = agg.close(100.0, 104.0)
    finally:
        window.HOLD = held
    want = oracle(stream, 100.0, 104.0)
    if not stream:
        want["model"] = None
    check(summary, want)


def test_a_long_window_folds_and_keeps_exact_figures_and_frees_the_records() -> None:
    rng = np.random.default_rng(1)
    infer = rng.gamma(4.0, 1.5, 3 * window.HOLD + 123)
    stream = [
        {"type": "result", "degraded": False, "model": PRIMARY, "version": "1", "backend": "b",
         "top": [{"label": ["ok", "crack"][i % 2], "score": 0.5 + (i % 5) / 10}],
         "ms": {"capture": 1.0, "pre": 0.5, "infer": float(v), "post": 0.1}}
        for i, v in enumerate(infer)
    ]  # fmt: skip
    agg = WindowAggregator(PRIMARY)
    refs = [sys.getrefcount(x) for x in (stream[0], stream[0]["ms"], stream[0]["top"])]
    for r in stream:
        agg.add(r)
    # the aggregator keeps no reference to a record or its parts
    assert [sys.getrefcount(x) for x in (stream[0], stream[0]["ms"], stream[0]["top"])] == refs
    summary = agg.close(0.0, 60.0)
    check(summary, oracle(stream, 0.0, 60.0))
    assert summary["latency_ms"]["infer"]["max"] == round(float(infer.max()), 3)
    assert agg.close(60.0, 120.0)["frames"] == 0  # the next window starts empty
