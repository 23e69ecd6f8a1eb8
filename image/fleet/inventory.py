"""The fleet inventory: one row per device, with filters (``kiln fleet status``)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from image.fleet.store import Store


@dataclass(frozen=True)
class DeviceRow:
    device: str
    site: str
    target: str
    version: str | None
    slot: str | None
    mode: str | None
    model: str | None
    last_seen: float
    last_update: str | None
    alerts: int
    drifted: bool

    def stale(self, now: float, after_s: float) -> bool:
        return now - self.last_seen > after_s


def inventory(
    store: Store,
    *,
    site: str | None = None,
    target: str | None = None,
    version: str | None = None,
    stale_after_s: float | None = None,
    now: float | None = None,
) -> list[DeviceRow]:
    """Devices matching every filter given; ``stale_after_s`` keeps only those silent that long."""
    clauses, params = [], []
    for column, value in (("site", site), ("target", target), ("version", version)):
        if value is not None:
            clauses.append(f"d.{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    statement = (
        "SELECT d.device, d.site, d.target, d.version, d.slot, d.mode, d.model, d.last_seen, "  # noqa: S608
        "d.last_update, d.alerts, (SELECT w.drifted FROM windows w WHERE w.device = d.device "
        "ORDER BY w.ts_start DESC LIMIT 1) FROM devices d "
        + where  # only constant column names; the values are parameters
        + " ORDER BY d.site, d.device"
    )
    out = [
        DeviceRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]))
        for r in store.query(statement, params)
    ]
    if stale_after_s is not None:
        t = time.time() if now is None else now
        out = [r for r in out if r.stale(t, stale_after_s)]
    return out
