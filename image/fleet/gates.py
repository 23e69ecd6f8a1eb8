"""Rollout gates computed from the fleet store (for ``kiln rollout advance`` / ``status``).

A stage may advance when, among the stage's devices, since the stage started:

* every device reported ``update.committed`` (the update passed its health gate);
* the rollback rate (``update.rolled-back`` / devices) is at most ``max_rollback_rate``;
* no window of theirs showed drift, and no device is flagged against its peers.

``halt`` is true past ``halt_rollback_rate``: the rollout should stop by itself. The event kinds
are the update agent's own outcome names (appliance/ota, the lines of its events.jsonl that the
device's telemetry forwards: appliance/telemetry/update_events.py); the underscore spellings
of an earlier draft are read as the same outcomes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from image.fleet.peers import anomalies
from image.fleet.store import Store

COMMITTED = ("update.committed", "update_committed")
ROLLED_BACK = ("update.rolled-back", "update_rolled_back")


@dataclass(frozen=True)
class GateVerdict:
    advance: bool
    halt: bool
    committed: int
    rolled_back: int
    devices: int
    reasons: list[str] = field(default_factory=list)
    rolled_back_devices: list[str] = field(default_factory=list)


def _version_of(body: str) -> str | None:
    """The release an outcome message names (None: it names none, or is unreadable)."""
    try:
        found = json.loads(body).get("version")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def stage_gate(
    store: Store,
    devices: list[str],
    *,
    since: float,
    max_rollback_rate: float = 0.05,
    halt_rollback_rate: float = 0.2,
    version: str | None = None,
) -> GateVerdict:
    """The verdict for one stage (its device ids) since ``since`` (unix time).

    ``version``: count only the outcomes of that release (the agent names it in each
    ``update.committed`` / ``update.rolled-back``), so a second rollout running at the same
    time (a hotfix on the same devices) neither commits nor rolls back this one's stage. An
    outcome that names no version (an older agent) still counts.
    """
    wanted = set(devices)
    outcomes: dict[str, str] = {}
    for device, kind, body in store.query(
        "SELECT device, kind, body FROM events WHERE ts >= ? AND kind IN (?, ?, ?, ?) ORDER BY ts",
        (since, *COMMITTED, *ROLLED_BACK),
    ):
        if device in wanted and (version is None or _version_of(body) in (None, version)):
            outcomes[device] = kind
    committed = sum(1 for k in outcomes.values() if k in COMMITTED)
    rolled = sum(1 for k in outcomes.values() if k in ROLLED_BACK)
    n = max(len(wanted), 1)
    reasons = []
    if committed < len(wanted):
        reasons.append(f"{len(wanted) - committed} of {len(wanted)} devices have not committed")
    if rolled / n > max_rollback_rate:
        reasons.append(f"rollback rate {rolled / n:.1%} exceeds {max_rollback_rate:.1%}")
    drifted = sorted(
        d
        for (d, flag) in store.query(
            "SELECT device, drifted FROM windows WHERE ts_start >= ? ORDER BY ts_start", (since,)
        )
        if d in wanted and flag
    )
    if drifted:
        reasons.append(f"drift on {', '.join(sorted(set(drifted)))}")
    flagged = [f for f in anomalies(store, since=since) if f.device in wanted]
    reasons += [f"anomaly: {f.describe()}" for f in flagged]
    return GateVerdict(
        advance=not reasons,
        halt=rolled / n > halt_rollback_rate,
        committed=committed,
        rolled_back=rolled,
        devices=len(wanted),
        reasons=reasons,
        rolled_back_devices=sorted(d for d, k in outcomes.items() if k in ROLLED_BACK),
    )
