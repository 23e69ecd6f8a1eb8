"""The fleet store: one schema on SQLite (default, one file) or PostgreSQL (scale-out).

docs/decisions.md §17: no home-made database. Every message is inserted with
``ON CONFLICT (id) DO NOTHING`` (both engines), so a message delivered twice (a restarted
ingester, two ingesters, a device re-sending after an outage) is stored once.

Tables: ``windows`` (one row per device window, the figures peers are compared on as columns,
the whole message as JSON), ``events`` (alerts and other events), ``devices`` (the inventory:
latest known site, target, version, slot, mode, last seen, last update outcome, alert count).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from image.fleet.errors import FleetError

SCHEMA = [
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

_WINDOW_COLS = [
    *("id", "device", "site", "target", "model", "model_version", "version", "slot", "mode"),
    *("ts_start", "ts_end", "window_s", "frames", "fps", "latency_p95", "error_rate"),
    *("top1_mean", "temp_max_c", "cpu_pct", "drift_psi", "drifted", "predictions", "body"),
]
_EVENT_COLS = ["id", "device", "site", "target", "kind", "alert", "ts", "reason", "body"]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Store:
    """A connection to the fleet database; ``Store.open(url)`` picks the engine from the URL."""

    def __init__(self, conn: Any, engine: str, url: str) -> None:
        self.conn = conn
        self.engine = engine
        self.url = url
        self._mark = "%s" if engine == "postgresql" else "?"
        with self.transaction() as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    @classmethod
    def open(cls, url: str) -> Store:
        """``sqlite:///path.db`` or a plain path (SQLite), or ``postgresql://...``."""
        if url.startswith(("postgresql://", "postgres://")):
            try:
                import psycopg
            except ImportError:
                raise FleetError(
                    f"{url}: PostgreSQL needs psycopg 3: install edgekiln's 'postgresql' extra"
                ) from None
            try:
                pg: Any = psycopg.connect(url)
            except psycopg.Error as exc:
                raise FleetError(f"{url}: cannot connect: {exc}") from None
            return cls(pg, "postgresql", url)
        path = Path(url[len("sqlite://") :] if url.startswith("sqlite://") else url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: the ingester serialises use with a lock (paho's thread).
            conn: Any = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")  # readers (status, report) never block ingest
            conn.execute("PRAGMA synchronous=NORMAL")  # a committed row survives a killed process
        except (OSError, sqlite3.Error) as exc:
            raise FleetError(f"{path}: cannot open the fleet database: {exc}") from None
        return cls(conn, "sqlite", str(path))

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if self.engine == "sqlite":
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        else:
            with self.conn.transaction(), self.conn.cursor() as cur:
                yield cur

    def sql(self, statement: str) -> str:
        return statement.replace("?", self._mark)

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.engine == "sqlite":
            return list(self.conn.execute(statement, params).fetchall())
        with self.conn.cursor() as cur:
            cur.execute(self.sql(statement), params)
            rows = list(cur.fetchall())
        self.conn.commit()
        return rows

    # --- ingest ---------------------------------------------------------------------------

    def insert(self, message: dict[str, Any]) -> bool:
        """Store one device message; False if its id was already stored (a duplicate)."""
        return self.insert_many([message])[0]

    def insert_many(self, messages: list[dict[str, Any]]) -> list[bool]:
        """Store messages in one transaction; per message, False for a duplicate (or a result)."""
        out = []
        with self.transaction() as cur:
            for message in messages:
                kind = message.get("type")
                if kind == "window":
                    stored = self._insert_window(cur, message)
                elif kind == "event":
                    stored = self._insert_event(cur, message)
                else:
                    stored = False  # per-frame results are not kept in the fleet store
                if stored:
                    self._touch_device(cur, message)
                out.append(stored)
        return out

    def _insert_window(self, cur: Any, m: dict[str, Any]) -> bool:
        system = m.get("system") or {}
        latency = (m.get("latency_ms") or {}).get("total") or {}
        drift = m.get("drift") or {}
        row = {
            **{k: m.get(k) for k in _WINDOW_COLS},
            "latency_p95": _num(latency.get("p95")),
            "temp_max_c": _num(system.get("temp_max_c")),
            "cpu_pct": _num(system.get("cpu_pct")),
            "drift_psi": _num(drift.get("psi")),
            "drifted": 1 if drift.get("drifted") else 0,
            "predictions": json.dumps(m.get("predictions") or {}, sort_keys=True),
            "body": json.dumps(m, sort_keys=True),
        }
        return self._insert(cur, "windows", _WINDOW_COLS, row)

    def _insert_event(self, cur: Any, m: dict[str, Any]) -> bool:
        row = {
            **{k: m.get(k) for k in _EVENT_COLS},
            "alert": 1 if m.get("alert") else 0,
            "ts": _num(m.get("ts")) or 0.0,
            "body": json.dumps(m, sort_keys=True),
        }
        return self._insert(cur, "events", _EVENT_COLS, row)

    def _insert(self, cur: Any, table: str, columns: Sequence[str], row: dict[str, Any]) -> bool:
        """Insert ``row`` once: a message id seen before (a redelivery) stores nothing."""
        cols = ", ".join(columns)
        marks = ", ".join("?" * len(columns))
        cur.execute(
            self.sql(f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"),  # noqa: S608
            [row[k] for k in columns],
        )
        return bool(cur.rowcount == 1)

    def _touch_device(self, cur: Any, m: dict[str, Any]) -> None:
        is_window = m.get("type") == "window"
        seen = _num(m.get("ts_end") if is_window else m.get("ts")) or 0.0
        update = (
            f"{m.get('kind')}: {m.get('reason', '')}"[:200]
            if str(m.get("kind", "")).startswith("update")
            else None
        )
        cur.execute(
            self.sql(
                "INSERT INTO devices (device, site, target, version, slot, mode, model, "  # noqa: S608
                "last_seen, last_update, alerts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (device) DO UPDATE SET "
                + ", ".join(
                    # a late (buffered) message never overwrites what a newer one said
                    f"{c} = CASE WHEN excluded.last_seen >= devices.last_seen "
                    f"THEN COALESCE(excluded.{c}, devices.{c}) ELSE devices.{c} END"
                    for c in ("site", "target", "version", "slot", "mode", "model")
                )
                + ", last_seen = "
                + (
                    "MAX(devices.last_seen, excluded.last_seen)"
                    if self.engine == "sqlite"
                    else "GREATEST(devices.last_seen, excluded.last_seen)"
                )
                + ", last_update = COALESCE(excluded.last_update, devices.last_update)"
                ", alerts = devices.alerts + excluded.alerts"
            ),
            [
                m.get("device"),
                m.get("site"),
                m.get("target"),
                m.get("version") if is_window else None,
                m.get("slot") if is_window else None,
                m.get("mode") if is_window else None,
                m.get("model") if is_window else None,
                seen,
                update,
                1 if (not is_window and m.get("alert")) else 0,
            ],
        )

    def counts(self) -> dict[str, int]:
        return {
            t: int(self.query(f"SELECT COUNT(*) FROM {t}")[0][0])  # noqa: S608
            for t in ("windows", "events", "devices")
        }

    def close(self) -> None:
        self.conn.close()
