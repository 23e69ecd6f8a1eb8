"""The fleet store: one schema on SQLite (default, one file) or PostgreSQL (scale-out).

docs/decisions.md §17: no home-made database. Every message is inserted with
``ON CONFLICT (id) DO NOTHING`` (both engines), so a message delivered twice (a restarted
ingester, two ingesters, a device re-sending after an outage) is stored once.

Tables: ``windows`` (one row per device window, the figures peers are compared on as columns,
the whole message as JSON), ``events`` (alerts and other events), ``devices`` (the inventory:
latest known site, target, version, slot, mode, last seen, last update outcome, alert count).
The inventory follows the device's own clock, not the arrival order, and older databases are
migrated in place when opened: image/fleet/schema.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from image.fleet.errors import FleetError
from image.fleet.schema import NO_KEY, ensure_schema

_WINDOW_COLS = [
    *("id", "device", "site", "target", "model", "model_version", "version", "slot", "mode"),
    *("ts_start", "ts_end", "window_s", "frames", "fps", "latency_p95", "error_rate"),
    *("top1_mean", "temp_max_c", "cpu_pct", "drift_psi", "drifted", "predictions", "body"),
]
_EVENT_COLS = ["id", "device", "site", "target", "kind", "alert", "ts", "reason", "body"]


def _newer(group: str, ts: str) -> str:
    """SQL: the incoming message's key for ``group`` is greater than the stored one."""
    return (
        f"(excluded.{ts}, excluded.{group}_seq, excluded.{group}_id) > "
        f"(devices.{ts}, devices.{group}_seq, devices.{group}_id)"
    )


def _pick(group: str, ts: str, columns: Sequence[str], keep: bool = False) -> list[str]:
    """SET clauses taking ``columns`` from the incoming row when its ``group`` key is newer."""
    newer = _newer(group, ts)
    return [
        f"{c} = CASE WHEN {newer} THEN "
        + (f"COALESCE(excluded.{c}, devices.{c})" if keep else f"excluded.{c}")
        + f" ELSE devices.{c} END"
        for c in columns
    ]


# constant column names only; the values are parameters
_UPSERT_DEVICE = (
    "INSERT INTO devices (device, site, target, version, slot, mode, model, last_update, "  # noqa: S608
    "last_seen, seen_seq, seen_id, state_ts, state_seq, state_id, update_ts, update_seq, "
    "update_id, alerts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (device) DO UPDATE SET "
    + ", ".join(
        # every right-hand side reads the row as it was: the key columns go last for clarity
        _pick("seen", "last_seen", ("site", "target"))
        + _pick("state", "state_ts", ("version", "slot", "mode", "model"), keep=True)
        + _pick("update", "update_ts", ("last_update",))
        + _pick("seen", "last_seen", ("last_seen", "seen_seq", "seen_id"))
        + _pick("state", "state_ts", ("state_ts", "state_seq", "state_id"))
        + _pick("update", "update_ts", ("update_ts", "update_seq", "update_id"))
        + ["alerts = devices.alerts + excluded.alerts"]
    )
)


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
            self.migrated_from = ensure_schema(cur, engine, url)

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
        """Store messages in one transaction; per message, False for a duplicate (or a result).

        Rows are locked in one global order (windows by id, events by id, then devices by
        name), so two ingesters committing overlapping batches on PostgreSQL (a redelivery,
        one device's messages split between them) wait for each other instead of deadlocking.
        """
        out = [False] * len(messages)
        rank = {"window": 0, "event": 1}
        order = sorted(
            (i for i, m in enumerate(messages) if m.get("type") in rank),  # results: not kept
            key=lambda i: (rank[messages[i]["type"]], str(messages[i].get("id"))),
        )
        with self.transaction() as cur:
            for i in order:
                message = messages[i]
                if message["type"] == "window":
                    out[i] = self._insert_window(cur, message)
                else:
                    out[i] = self._insert_event(cur, message)
            for i in sorted((i for i in order if out[i]), key=lambda i: str(messages[i]["device"])):
                self._touch_device(cur, messages[i])
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
        """Merge ``m`` into its device's inventory row by the device's clock (fleet/schema.py).

        Each column group changes only for a message with a greater key (device timestamp,
        per-boot sequence, id) than the one it holds, so arrival order does not matter.
        """
        is_window = m.get("type") == "window"
        ts = _num(m.get("ts_end") if is_window else m.get("ts")) or 0.0
        seq = m.get("seq")
        key = (ts, seq if isinstance(seq, int) and not isinstance(seq, bool) else -1, str(m["id"]))
        is_update = not is_window and str(m.get("kind", "")).startswith("update")
        update = f"{m.get('kind')}: {m.get('reason') or ''}"[:200] if is_update else None
        state = (
            [m.get(c) for c in ("version", "slot", "mode", "model")] if is_window else [None] * 4
        )
        cur.execute(self.sql(_UPSERT_DEVICE), [
            m.get("device"), m.get("site"), m.get("target"), *state, update,
            *key, *(key if is_window else NO_KEY), *(key if is_update else NO_KEY),
            1 if (not is_window and m.get("alert")) else 0,
        ])  # fmt: skip

    def counts(self) -> dict[str, int]:
        return {
            t: int(self.query(f"SELECT COUNT(*) FROM {t}")[0][0])  # noqa: S608
            for t in ("windows", "events", "devices")
        }

    def close(self) -> None:
        self.conn.close()
