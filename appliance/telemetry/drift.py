"""Prediction drift: PSI between recent predictions and the package's ``reference.histogram``.

The population stability index of two distributions ``p`` (recent) and ``q`` (reference) over the
same labels is ``sum((p_i - q_i) * ln(p_i / q_i))``. Usual reading: below 0.1 stable, 0.1-0.25 a
moderate shift, above 0.25 a large one. Empty bins are smoothed with ``EPSILON`` so a label that
never occurs does not make the index infinite.

The detector pools the last ``windows`` windows' prediction counts (a sliding window), so a
short quiet window does not decide alone, and reports nothing until the pool holds at least
``min_samples`` predictions. It alerts when the index crosses the threshold and again only after
it came back below (``cleared``): one alert per episode, not one per window.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

EPSILON = 1e-4


def psi(recent: dict[str, float], reference: dict[str, float]) -> float:
    """PSI of two histograms (counts or fractions) over the union of their labels."""
    labels = sorted(set(recent) | set(reference))
    rn = sum(recent.values()) or 1.0
    qn = sum(reference.values()) or 1.0
    total = 0.0
    for label in labels:
        p = max(recent.get(label, 0.0) / rn, EPSILON)
        q = max(reference.get(label, 0.0) / qn, EPSILON)
        total += (p - q) * math.log(p / q)
    return total


@dataclass(frozen=True)
class DriftReading:
    """One window's verdict: the index, the samples it rests on, and whether to alert."""

    psi: float | None  # None: fewer than min_samples pooled
    samples: int
    threshold: float
    windows: int
    drifted: bool
    alert: str | None  # "drift" (crossed up), "drift_cleared" (came back), or None

    def to_json(self) -> dict[str, object]:
        return {
            "psi": None if self.psi is None else round(self.psi, 5),
            "samples": self.samples,
            "threshold": self.threshold,
            "windows": self.windows,
            "drifted": self.drifted,
        }


class DriftDetector:
    """Feed one window's prediction counts at a time; read the PSI verdict."""

    def __init__(
        self,
        reference: dict[str, float],
        *,
        threshold: float = 0.2,
        min_samples: int = 200,
        windows: int = 5,
    ) -> None:
        self.reference = dict(reference)
        self.threshold = threshold
        self.min_samples = min_samples
        self._recent: deque[Counter[str]] = deque(maxlen=max(1, windows))
        self.drifted = False

    def add_window(self, counts: dict[str, int]) -> DriftReading:
        """Slide the window by one; return the pooled PSI and any alert to raise."""
        self._recent.append(Counter(counts))
        pooled: Counter[str] = Counter()
        for c in self._recent:
            pooled.update(c)
        samples = sum(pooled.values())
        windows = len(self._recent)
        if not self.reference or samples < self.min_samples:
            return DriftReading(None, samples, self.threshold, windows, self.drifted, None)
        value = psi({k: float(v) for k, v in pooled.items()}, self.reference)
        alert = None
        if value > self.threshold and not self.drifted:
            self.drifted, alert = True, "drift"
        elif value <= self.threshold and self.drifted:
            self.drifted, alert = False, "drift_cleared"
        return DriftReading(value, samples, self.threshold, windows, self.drifted, alert)
