"""A fleet database of the first schema (no version) is migrated in place, keeping its rows.

The database is written with the first schema's DDL as kiln shipped it (frozen below, copied
from image/fleet/store.py before the schema had a version) and rows as that code stored them,
including a device row an out-of-order delivery left stale (an older version and update
outcome than its newest stored window and event). Opening it with today's Store migrates it
(SQLite and a real PostgreSQL), keeps every row, repairs the stale row from the stored
messages, and from then on orders by the device's clock. A database newer than this kiln is
refused with a message saying so.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from image.fleet.errors import FleetError
from image.fleet.inventory import inventory
from image.fleet.schema import SCHEMA_VERSION
from image.fleet.store import Store
from tests.fleet.postgres import postgres_cluster

V1_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS windows (
        id TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, target TEXT NOT NULL,
        model TEXT, model_version TEXT, version TEXT, slot TEXT, mode TEXT,
        ts_start DOUBLE PRECISION NOT NULL, ts_end DOUBLE PRECISION NOT NULL,
        window_s DOUBLE PRECISION, frames INTEGER, fps DOUBLE PRECISION,
        latency_p95 DOUBLE PRECISION, error_rate DOUBLE PRECISION, top1_mean DOUBLE PRECISION,
        temp_max_c DOUBLE PRECISION, cpu_pct DOUBLE PRECISION, drift_psi DOUBLE PRECISION,
        drifted INTEGER, predictions TEXT, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS windows_ts ON windows (ts_start)",
    "CREATE INDEX IF NOT EXISTS windows_device ON windows (device, ts_start)",
    """CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, target TEXT NOT NULL,
        kind TEXT NOT NULL, alert INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,
        reason TEXT, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS events_device ON events (device, ts)",
    """CREATE TABLE IF NOT EXISTS devices (
        device TEXT PRIMARY KEY, site TEXT NOT NULL, target TEXT NOT NULL, version TEXT,
        slot TEXT, mode TEXT, model TEXT, last_seen DOUBLE PRECISION NOT NULL,
        last_update TEXT, alerts INTEGER NOT NULL DEFAULT 0)""",
]
T = 1_800_000_000.0
WINDOWS = [  # (id, device, version, slot, mode, ts_end)
    ("cam-1:w:1", "cam-1", "1.4.0", "a", "primary", T + 60),
    ("cam-1:w:2", "cam-1", "2.0.0", "b", "fallback", T + 180),
    ("cam-2:w:1", "cam-2", "1.4.0", "a", "primary", T + 60),
]
EVENTS = [  # (id, device, kind, alert, ts, reason)
    ("cam-1:e:1", "cam-1", "update.installed", 1, T + 100, "2.0.0 in slot b"),
    ("cam-1:e:2", "cam-1", "update.committed", 1, T + 170, "2.0.0 passed its health gate"),
    ("cam-2:e:1", "cam-2", "source_lost", 1, T + 30, "camera gone"),
]
DEVICES = [  # as the first schema's code left them; cam-1 stale (arrival order, not clock)
    ("cam-1", "plant-a", "generic-x86-64", "1.4.0", "a", "primary", "inspect-primary",
     T + 180, "update.installed: 2.0.0 in slot b", 2),
    ("cam-2", "plant-b", "generic-x86-64", "1.4.0", "a", "primary", "inspect-primary",
     T + 60, None, 1),
]  # fmt: skip


def write_v1(conn: Any, mark: str) -> None:
    """The first schema and its rows, through a DB-API connection (sqlite3 or psycopg)."""
    cur = conn.cursor()
    for statement in V1_SCHEMA:
        cur.execute(statement)

    def insert(table: str, row: dict[str, Any]) -> None:
        cols = ", ".join(row)
        marks = ", ".join([mark] * len(row))
        cur.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(row.values()))

    for wid, device, version, slot, mode, ts_end in WINDOWS:
        body = {"type": "window", "id": wid, "device": device, "version": version}
        insert("windows", {"id": wid, "device": device, "site": "plant-a",
                           "target": "generic-x86-64", "model": "inspect-primary",
                           "version": version, "slot": slot, "mode": mode, "ts_start": ts_end - 60,
                           "ts_end": ts_end, "frames": 1800, "fps": 30.0, "drifted": 0,
                           "predictions": "{}", "body": json.dumps(body)})  # fmt: skip
    for eid, device, kind, alert, ts, reason in EVENTS:
        insert("events", {"id": eid, "device": device, "site": "plant-a",
                          "target": "generic-x86-64", "kind": kind, "alert": alert, "ts": ts,
                          "reason": reason, "body": json.dumps({"id": eid})})  # fmt: skip
    for row in DEVICES:
        names = ("device", "site", "target", "version", "slot", "mode", "model", "last_seen",
                 "last_update", "alerts")  # fmt: skip
        insert("devices", dict(zip(names, row, strict=True)))
    conn.commit()


def check_migrated(url: str) -> None:
    store = Store.open(url)
    assert store.migrated_from == 1
    assert store.counts() == {"windows": 3, "events": 3, "devices": 2}
    assert {r[0] for r in store.query("SELECT id FROM windows")} == {w[0] for w in WINDOWS}
    assert {r[0] for r in store.query("SELECT id FROM events")} == {e[0] for e in EVENTS}
    version = store.query("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]
    rows = {r.device: r for r in inventory(store)}
    one, two = rows["cam-1"], rows["cam-2"]
    # repaired from the newest stored window and update outcome
    assert (one.version, one.slot, one.mode) == ("2.0.0", "b", "fallback")
    assert one.last_update == "update.committed: 2.0.0 passed its health gate"
    assert (one.site, one.last_seen, one.alerts) == ("plant-a", T + 180, 2)
    assert (two.version, two.site, two.last_update, two.alerts) == ("1.4.0", "plant-b", None, 1)
    # from now on by the device's clock: an older window changes nothing, a newer one does
    old = {"type": "window", "id": "cam-1:w:0", "device": "cam-1", "site": "plant-a",
           "target": "generic-x86-64", "seq": 1, "ts_start": T, "ts_end": T + 30,
           "version": "1.3.0", "slot": "a", "mode": "degraded"}  # fmt: skip
    assert store.insert(dict(old)) is True
    assert inventory(store)[0].version == "2.0.0"
    new = {**old, "id": "cam-1:w:3", "ts_start": T + 180, "ts_end": T + 240, "version": "2.0.1"}
    assert store.insert(new) is True
    assert (inventory(store)[0].version, inventory(store)[0].last_seen) == ("2.0.1", T + 240)
    store.close()
    again = Store.open(url)  # already at the current version: nothing to do
    assert again.migrated_from == SCHEMA_VERSION
    assert again.counts()["windows"] == 5
    again.close()


def test_a_first_schema_sqlite_database_migrates_in_place(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    conn = sqlite3.connect(db)
    write_v1(conn, "?")
    conn.close()
    check_migrated(str(db))


@pytest.mark.integration
def test_a_first_schema_postgresql_database_migrates_in_place() -> None:
    import psycopg

    with postgres_cluster() as url:
        with psycopg.connect(url) as conn:
            write_v1(conn, "%s")
        check_migrated(url)


def test_a_database_newer_than_this_kiln_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "fleet.db")
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [SCHEMA_VERSION + 1])
    conn.commit()
    conn.close()
    with pytest.raises(FleetError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Store.open(db)


def test_a_new_database_starts_at_the_current_version(tmp_path: Path) -> None:
    store = Store.open(str(tmp_path / "fleet.db"))
    assert store.migrated_from == 0
    version = store.query("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]
    store.close()
