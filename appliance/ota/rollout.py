"""Staged rollouts on the device: may this device take this release yet?

``kiln rollout`` (image/release/rollout.py) writes ``custom.edgekiln.rollout`` into the signed
TUF targets metadata of a release::

    {"state": "active" | "paused" | "aborted" | "held", "stages": [1, 10, 50, 100],
     "stage": 0, "sites": ["plant-a", ...]}

A device takes the release only when its bucket (a stable hash of its id and the release
version, 0-99) is below the current stage's percentage and its site is allowed (an empty list:
every site). ``paused``, ``aborted`` and ``held`` are 0 % (nobody new takes it; nobody is
downgraded: a device already on the release sees nothing to do); ``resume`` returns a paused
rollout to its stage. A release without the field is for every
device. The id and the site live on data (docs/decisions.md §18).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

STATES = ("active", "paused", "aborted", "held")


def bucket(device_id: str, version: str) -> int:
    """0-99, stable for a (device, release) pair, independent across releases."""
    digest = hashlib.sha256(f"edgekiln-rollout\0{device_id}\0{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def percent(rollout: dict[str, Any] | None) -> int:
    """The share of devices (0-100) the rollout admits now."""
    if rollout is None:
        return 100
    state = rollout.get("state")
    stages = rollout.get("stages") or []
    stage = rollout.get("stage", 0)
    if state != "active" or not isinstance(stage, int):
        return 0
    if not 0 <= stage < len(stages) or not isinstance(stages[stage], int):
        return 0
    return max(0, min(100, int(stages[stage])))


@dataclass(frozen=True)
class Admission:
    """Whether the device may take the release, and why."""

    allowed: bool
    reason: str
    bucket: int
    percent: int


def admit(
    rollout: dict[str, Any] | None, device_id: str, site: str | None, version: str
) -> Admission:
    """Apply the rollout's site list and stage to this device."""
    b = bucket(device_id, version)
    pct = percent(rollout)
    sites = (rollout or {}).get("sites") or []
    if sites and site not in sites:
        return Admission(False, f"site {site or '(none)'} is not in the rollout's sites", b, pct)
    if pct < 100 and device_id in ("", "unknown"):
        return Admission(False, "this device has no id on data: it waits for 100 %", b, pct)
    if b >= pct:
        state = (rollout or {}).get("state", "active")
        return Admission(False, f"bucket {b} is not below the rollout's {pct} % ({state})", b, pct)
    return Admission(True, f"bucket {b} < {pct} %", b, pct)
