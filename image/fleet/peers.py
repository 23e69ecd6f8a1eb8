"""Peer anomaly: a device whose window figures stand apart from its peers' (same target and model).

Method: for each window slot (windows starting in the same ``window_s`` bucket) and each peer
group (same target, same model), every metric gets the **modified z-score** of Iglewicz and
Hoaglin, ``z = (x - median) / (1.4826 * MAD)``, and ``|z| > 3.5`` marks the window. Why median
and MAD rather than mean and standard deviation: their breakdown point is 50 %, so a handful of
bad devices cannot drag the reference towards themselves and hide (with a mean/SD, three hot
devices in a hundred inflate the SD they are measured with). 1.4826 makes the MAD estimate the
standard deviation for normal data, so 3.5 keeps the usual meaning.

Two guards keep healthy fleets quiet:

* **a floor under the scale** per metric (``FLOORS``): when peers agree closely (MAD near 0, e.g.
  every device at exactly 0 errors) a tiny difference would get a huge z; the floor is the
  smallest difference that matters to an operator (5 % of the median fps or latency, 2 degrees,
  1 % errors, 0.05 top-1 score, a PSI of 0.1 — the usual "stable" bound of the index);
* **persistence**: a device is flagged for a metric when at least ``persist`` of its last
  ``recent`` windows were marked (a run rule, as in statistical process control). A healthy
  device crosses 3.5 in one window about once in two thousand; twice in three almost never.

The prediction distribution is compared as the PSI between the device's window histogram and
the pooled histogram of its peers in that slot; only a high value is an anomaly.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

from image.fleet.store import Store

THRESHOLD = 3.5
METRICS = ("fps", "latency_p95", "error_rate", "top1_mean", "temp_max_c", "prediction_psi")
# (relative floor as a fraction of |median|, absolute floor) for the scale of each metric
FLOORS = {
    "fps": (0.05, 0.1),
    "latency_p95": (0.05, 0.1),
    "error_rate": (0.0, 0.01),
    "top1_mean": (0.0, 0.05),
    "temp_max_c": (0.0, 2.0),
    "prediction_psi": (0.0, 0.1 / THRESHOLD),
}
ONE_SIDED = {"prediction_psi"}  # only "more different than the peers" is an anomaly
MIN_PEERS = 5
EPSILON = 1e-4


@dataclass(frozen=True)
class Mark:
    """One metric of one device in one window slot, past the threshold."""

    device: str
    slot: int
    metric: str
    value: float
    median: float
    scale: float
    z: float


@dataclass(frozen=True)
class Flag:
    """A device flagged on a metric: its latest marked window's figures and how often."""

    device: str
    site: str
    target: str
    model: str
    metric: str
    value: float
    peer_median: float
    z: float
    windows_marked: int
    windows_seen: int

    def describe(self) -> str:
        return (
            f"{self.device} ({self.site}): {self.metric} {self.value:.4g} vs peer median "
            f"{self.peer_median:.4g} (z {self.z:+.1f}) in {self.windows_marked} of the last "
            f"{self.windows_seen} windows"
        )


def _psi(p: Counter[str], q: Counter[str]) -> float:
    pn, qn = sum(p.values()) or 1, sum(q.values()) or 1
    total = 0.0
    for label in set(p) | set(q):
        a, b = max(p[label] / pn, EPSILON), max(q[label] / qn, EPSILON)
        total += (a - b) * math.log(a / b)
    return total


def robust_marks(values: dict[str, float], metric: str, slot: int) -> list[Mark]:
    """Modified z-scores of one metric among one group's devices; those past the threshold."""
    if len(values) < MIN_PEERS:
        return []
    median = statistics.median(values.values())
    mad = statistics.median(abs(v - median) for v in values.values())
    rel, absolute = FLOORS[metric]
    scale = max(1.4826 * mad, rel * abs(median), absolute)
    marks = []
    for device, value in values.items():
        z = (value - median) / scale
        if z > THRESHOLD or (metric not in ONE_SIDED and z < -THRESHOLD):
            marks.append(Mark(device, slot, metric, value, median, scale, z))
    return marks


def anomalies(store: Store, *, since: float = 0.0, recent: int = 3, persist: int = 2) -> list[Flag]:
    """Devices flagged against their peers over their last ``recent`` windows since ``since``."""
    rows = store.query(
        "SELECT device, site, target, model, ts_start, window_s, fps, latency_p95, error_rate, "
        "top1_mean, temp_max_c, predictions FROM windows WHERE ts_start >= ? ORDER BY ts_start",
        (since,),
    )
    groups: dict[tuple[str, str, int], dict[str, dict[str, float | None]]] = defaultdict(dict)
    hists: dict[tuple[str, str, int], dict[str, Counter[str]]] = defaultdict(dict)
    info: dict[str, tuple[str, str, str]] = {}
    for device, site, target, model, start, window_s, *figures, predictions in rows:
        slot = int(start // (window_s or 60.0))
        key = (target, model or "", slot)
        groups[key][device] = dict(zip(METRICS[:-1], figures, strict=True))
        hists[key][device] = Counter(json.loads(predictions or "{}"))
        info[device] = (site, target, model or "")
    seen: dict[str, list[int]] = defaultdict(list)
    marks: list[Mark] = []
    for key, devices in groups.items():
        slot = key[2]
        for device in devices:
            seen[device].append(slot)
        pooled: Counter[str] = Counter()
        for hist in hists[key].values():
            pooled.update(hist)
        for metric in METRICS:
            values: dict[str, float] = {}
            if metric == "prediction_psi":
                values = {d: _psi(h, pooled) for d, h in hists[key].items() if h}
            else:
                for device, row in devices.items():
                    value = row[metric]
                    if value is not None:
                        values[device] = float(value)
            marks += robust_marks(values, metric, slot)
    return _persistent(marks, seen, info, recent, persist)


def _persistent(
    marks: list[Mark],
    seen: dict[str, list[int]],
    info: dict[str, tuple[str, str, str]],
    recent: int,
    persist: int,
) -> list[Flag]:
    by_key: dict[tuple[str, str], list[Mark]] = defaultdict(list)
    for m in marks:
        by_key[(m.device, m.metric)].append(m)
    flags = []
    for (device, metric), found in sorted(by_key.items()):
        last = set(sorted(seen[device])[-recent:])
        hits = sorted((m for m in found if m.slot in last), key=lambda m: m.slot)
        if len(hits) >= min(persist, len(last)):
            site, target, model = info[device]
            latest = hits[-1]
            flags.append(
                Flag(
                    device,
                    site,
                    target,
                    model,
                    metric,
                    latest.value,
                    latest.median,
                    latest.z,
                    len(hits),
                    len(last),
                )
            )
    return flags
