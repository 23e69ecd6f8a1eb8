"""The fleet store's schema, its version, and the in-place migrations of older databases.

One schema on both engines (SQLite, PostgreSQL). ``meta`` holds ``schema_version``; a database
written before the version existed (version 1: no ``meta`` table) is migrated in place, in one
transaction, keeping its rows. PostgreSQL takes an advisory lock first, so two ingesters starting
together on one database migrate it once.

Version 2 (the inventory orders by the device's own clock, not by arrival): each group of
``devices`` columns carries the key of the message it came from, ``(ts, seq, id)``: the
device's timestamp, its per-boot message sequence, and the message id as the last tie-break. A
message updates a group only when its key is greater, so the row is the same whatever order
(two ingesters, a replayed buffer) the messages arrived in:

* ``seen``: any message: ``site``, ``target``, ``last_seen``;
* ``state``: windows: ``version``, ``slot``, ``mode``, ``model``;
* ``update``: the update agent's outcomes (``update.*`` events): ``last_update``.

The migration fills ``state`` and ``update`` from the newest stored window and update event,
which also repairs a row an out-of-order delivery left stale under version 1.
"""

from __future__ import annotations

from typing import Any

from image.fleet.errors import FleetError

SCHEMA_VERSION = 2
_PG_LOCK = 0x6B696C6E  # pg_advisory_xact_lock key: "kiln"
NO_KEY: tuple[float, int, str] = (-1.0, -1, "")  # older than any message

_WINDOWS = """CREATE TABLE IF NOT EXISTS windows (
        id TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, target TEXT NOT NULL,
        model TEXT, model_version TEXT, version TEXT, slot TEXT, mode TEXT,
        ts_start DOUBLE PRECISION NOT NULL, ts_end DOUBLE PRECISION NOT NULL,
        window_s DOUBLE PRECISION, frames INTEGER, fps DOUBLE PRECISION,
        latency_p95 DOUBLE PRECISION, error_rate DOUBLE PRECISION, top1_mean DOUBLE PRECISION,
        temp_max_c DOUBLE PRECISION, cpu_pct DOUBLE PRECISION, drift_psi DOUBLE PRECISION,
        drifted INTEGER, predictions TEXT, body TEXT NOT NULL)"""
_EVENTS = """CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY, device TEXT NOT NULL, site TEXT NOT NULL, target TEXT NOT NULL,
        kind TEXT NOT NULL, alert INTEGER NOT NULL, ts DOUBLE PRECISION NOT NULL,
        reason TEXT, body TEXT NOT NULL)"""
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS windows_ts ON windows (ts_start)",
    "CREATE INDEX IF NOT EXISTS windows_device ON windows (device, ts_start)",
    "CREATE INDEX IF NOT EXISTS events_device ON events (device, ts)",
]
# The version-2 key columns of ``devices`` (added by the migration from version 1).
_KEY_COLUMNS = [
    "seen_seq BIGINT NOT NULL DEFAULT -1",
    "seen_id TEXT NOT NULL DEFAULT ''",
    "state_ts DOUBLE PRECISION NOT NULL DEFAULT -1",
    "state_seq BIGINT NOT NULL DEFAULT -1",
    "state_id TEXT NOT NULL DEFAULT ''",
    "update_ts DOUBLE PRECISION NOT NULL DEFAULT -1",
    "update_seq BIGINT NOT NULL DEFAULT -1",
    "update_id TEXT NOT NULL DEFAULT ''",
]
_DEVICES = (
    "CREATE TABLE IF NOT EXISTS devices (\n"
    "        device TEXT PRIMARY KEY, site TEXT NOT NULL, target TEXT NOT NULL, version TEXT,\n"
    "        slot TEXT, mode TEXT, model TEXT, last_seen DOUBLE PRECISION NOT NULL,\n"
    "        last_update TEXT, alerts INTEGER NOT NULL DEFAULT 0,\n        "
    + ",\n        ".join(_KEY_COLUMNS)
    + ")"
)
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

_NEWEST_WINDOW = (
    "FROM windows w WHERE w.device = devices.device ORDER BY w.ts_end DESC, w.id DESC LIMIT 1"
)
_NEWEST_UPDATE = (
    "FROM events e WHERE e.device = devices.device AND e.kind LIKE 'update%' "
    "ORDER BY e.ts DESC, e.id DESC LIMIT 1"
)
# Only constant table and column names are formatted into these statements (no values).
_V1_TO_V2 = [
    *(f"ALTER TABLE devices ADD COLUMN {column}" for column in _KEY_COLUMNS),
    "UPDATE devices SET "  # noqa: S608
    + ", ".join(
        f"{c} = COALESCE((SELECT w.{c} {_NEWEST_WINDOW}), devices.{c})"
        for c in ("version", "slot", "mode", "model")
    )
    + f", state_ts = COALESCE((SELECT w.ts_end {_NEWEST_WINDOW}), -1)"
    + f", state_id = COALESCE((SELECT w.id {_NEWEST_WINDOW}), '')",
    "UPDATE devices SET "  # noqa: S608
    f"last_update = COALESCE((SELECT substr(e.kind || ': ' || COALESCE(e.reason, ''), 1, 200) "
    f"{_NEWEST_UPDATE}), devices.last_update), "
    f"update_ts = COALESCE((SELECT e.ts {_NEWEST_UPDATE}), -1), "
    f"update_id = COALESCE((SELECT e.id {_NEWEST_UPDATE}), '')",
]
MIGRATIONS: dict[int, list[str]] = {1: _V1_TO_V2}  # from version N to N + 1


def _tables(cur: Any, engine: str) -> set[str]:
    if engine == "sqlite":
        cur.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    return {str(row[0]) for row in cur.fetchall()}


def schema_version(cur: Any, engine: str) -> int:
    """0: an empty database; 1: the first schema (no ``meta``); else ``meta.schema_version``."""
    tables = _tables(cur, engine)
    if "meta" in tables:
        cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        row = cur.fetchone()
        return int(row[0]) if row else 1
    return 1 if "devices" in tables else 0


def ensure_schema(cur: Any, engine: str, url: str) -> int:
    """Create the schema or migrate it to ``SCHEMA_VERSION`` (inside the caller's transaction).

    Returns the version the database had before (0 when it was empty).
    """
    mark = "%s" if engine == "postgresql" else "?"
    if engine == "postgresql":
        cur.execute(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
    found = schema_version(cur, engine)
    if found > SCHEMA_VERSION:
        raise FleetError(
            f"{url}: the fleet database has schema version {found}, newer than this kiln's "
            f"{SCHEMA_VERSION}: run a kiln at least as new as the one that wrote it"
        )
    if found == 0:
        for statement in (_WINDOWS, _EVENTS, *_INDEXES, _DEVICES):
            cur.execute(statement)
    else:
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                cur.execute(statement)
    cur.execute(_META)
    if found < SCHEMA_VERSION:
        cur.execute(f"DELETE FROM meta WHERE key = {mark}", ["schema_version"])  # noqa: S608
        cur.execute(
            f"INSERT INTO meta (key, value) VALUES ({mark}, {mark})",  # noqa: S608
            ["schema_version", str(SCHEMA_VERSION)],
        )
    return found
