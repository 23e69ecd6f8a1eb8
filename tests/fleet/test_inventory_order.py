"""The inventory shows a device's newest state whatever order its messages arrive in.

Two ingesters on one shared subscription (or a restarted one replaying the broker's queue, a
device draining its disk buffer) store one device's messages out of order; the inventory
(version, slot, mode, model, site, last seen, last update) must still be the newest message's,
by the device's own timestamp and sequence (image/fleet/schema.py).

* a property (hypothesis) on SQLite and on a real PostgreSQL: a device's history over reboots
  (version, slot, mode, site changing; update outcomes; other events, some at the same
  timestamp as a window), delivered shuffled and partly twice through two store connections in
  random batches, gives the row computed from the newest messages;
* end to end: real devices (TelemetrySink over synthetic frames, update outcomes read from
  ``events.jsonl``) across an update and a reboot, published in reverse order to a real
  mosquitto, stored by two real ``kiln fleet ingest`` processes on one shared subscription.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.identity import Identity
from appliance.telemetry.uplink import TelemetrySink
from image.fleet.inventory import DeviceRow, inventory
from image.fleet.store import Store
from tests.fleet.ingester import IngestProcess
from tests.fleet.postgres import postgres_cluster
from tests.fleet.simulate import publish_all
from tests.inference.mqtt_broker import Broker
from tests.telemetry.helpers import SimClock

START = 1_800_000_000.0
_names = itertools.count()


# --- generated histories ---------------------------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One device's messages over 1-3 boots, each boot's seq counting from 1 as the sink does."""
    device = f"prop-{next(_names)}"
    messages: list[dict[str, Any]] = []
    t = START
    for boot in range(draw(st.integers(1, 3))):
        site = draw(st.sampled_from(["plant-a", "plant-b"]))
        version, slot = draw(st.sampled_from([("1.4.0", "a"), ("2.0.0", "b"), ("2.1.0", "a")]))
        seq = 0
        for _ in range(draw(st.integers(1, 6))):
            seq += 1
            t += 10.0
            messages.append({
                "type": "window", "id": f"{device}:w:{round(t * 1000)}", "device": device,
                "site": site, "target": "generic-x86-64", "seq": seq, "ts_start": t - 10.0,
                "ts_end": t, "version": version, "slot": slot,
                "mode": draw(st.sampled_from(["primary", "fallback", "degraded"])),
                "model": "inspect-primary", "frames": 300, "fps": 30.0,
            })  # fmt: skip
            for _ in range(draw(st.integers(0, 2))):
                seq += 1
                kinds = ["update.installed", "update.committed", "update.rolled-back",
                         "fallback", "source_lost"]  # fmt: skip
                kind = draw(st.sampled_from(kinds))
                same_ts = draw(st.booleans())  # sent in the same millisecond as the window
                messages.append({
                    "type": "event", "id": f"{device}:{boot}:{seq}", "device": device,
                    "site": site, "target": "generic-x86-64", "seq": seq, "kind": kind,
                    "alert": kind != "source_lost", "reason": f"r{boot}.{seq}",
                    "ts": t if same_ts else t + draw(st.floats(0.001, 9.0)),
                })  # fmt: skip
    return messages


def newest(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What the inventory must show: per column group, the message with the greatest key."""

    def key(m: dict[str, Any]) -> tuple[float, int, str]:
        return (m["ts_end"] if m["type"] == "window" else m["ts"], m["seq"], m["id"])

    seen = max(messages, key=key)
    state = max((m for m in messages if m["type"] == "window"), key=key)
    updates = [m for m in messages if str(m.get("kind", "")).startswith("update")]
    last = max(updates, key=key) if updates else None
    return {
        "site": seen["site"],
        "last_seen": key(seen)[0],
        **{c: state[c] for c in ("version", "slot", "mode", "model")},
        "last_update": f"{last['kind']}: {last['reason']}" if last else None,
        "alerts": sum(1 for m in messages if m["type"] == "event" and m["alert"]),
    }


def row_of(store: Store, device: str) -> DeviceRow:
    return next(r for r in inventory(store) if r.device == device)


def check_row(row: DeviceRow, want: dict[str, Any]) -> None:
    got = {k: getattr(row, k) for k in want}
    assert got == want


def deliver(stores: list[Store], messages: list[dict[str, Any]], order: list[int],
            cuts: list[int], replay: list[int]) -> None:  # fmt: skip
    """``messages`` in ``order`` plus a replayed few, in batches alternating between ``stores``."""
    stream = [messages[i] for i in order] + [messages[i % len(messages)] for i in replay]
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for n, (a, b) in enumerate(itertools.pairwise(bounds)):
        stores[n % len(stores)].insert_many([dict(m) for m in stream[a:b]])


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int], list[int], list[int]]:
    messages = draw(histories())
    order = draw(st.permutations(range(len(messages))))
    cuts = draw(st.lists(st.integers(0, 60), max_size=8))
    replay = draw(st.lists(st.integers(0, 60), max_size=4))  # duplicates: stored once
    return messages, order, cuts, replay


# --- the property on both engines ------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


def _property(url: str, case: tuple[list[dict[str, Any]], list[int], list[int], list[int]]) -> None:
    messages, order, cuts, replay = case
    stores = [Store.open(url), Store.open(url)]  # two ingesters' connections
    try:
        deliver(stores, messages, order, cuts, replay)
        check_row(row_of(stores[0], messages[0]["device"]), newest(messages))
    finally:
        for store in stores:
            store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries())
def test_shuffled_delivery_through_two_connections_shows_the_newest_state_sqlite(
    case: tuple[list[dict[str, Any]], list[int], list[int], list[int]], tmp_path_factory: Any
) -> None:
    _property(str(tmp_path_factory.getbasetemp() / "order.db"), case)


@pytest.mark.integration
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=deliveries())
def test_shuffled_delivery_through_two_connections_shows_the_newest_state_postgresql(
    case: tuple[list[dict[str, Any]], list[int], list[int], list[int]], pg_url: str
) -> None:
    _property(pg_url, case)


def test_reversed_history_shows_the_newest_state(tmp_path: Path) -> None:
    """The plainest case, readable when the property fails: newest first, oldest last."""
    messages = device_history(tmp_path, "cam-rev")
    store = Store.open(str(tmp_path / "f.db"))
    for m in reversed(messages):
        store.insert(dict(m))
    row = row_of(store, "cam-rev")
    assert (row.version, row.slot, row.mode, row.site) == ("2.0.0", "b", "primary", "plant-b")
    assert row.last_update == "update.committed: 2.0.0 passed its health gate"
    check_row(row, newest_of_real(messages))
    store.close()


# --- real devices, two real ingesters --------------------------------------------------------


class _Collect:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, record: dict[str, Any]) -> None:
        self.messages.append(record)

    def close(self) -> None:
        pass


def _frames(sink: TelemetrySink, clock: SimClock, seconds: float, model: str) -> None:
    end = clock() + seconds
    while clock() < end - 1e-9:
        sink.publish({"type": "result", "top": [{"label": "ok", "score": 0.9}], "model": model,
                      "version": "1.0.0", "backend": "onnxruntime", "degraded": False,
                      "ms": {"capture": 1.0, "pre": 0.5, "infer": 3.0, "post": 0.1}})  # fmt: skip
        clock.tick()


def device_history(tmp: Path, name: str) -> list[dict[str, Any]]:
    """A real device's messages: 1.4.0 in slot a (a fallback spell), an update installed,
    a reboot into 2.0.0 in slot b at another site, the update committed, primary again."""
    data = tmp / name
    events = data / "edgekiln" / "events.jsonl"
    events.parent.mkdir(parents=True)
    clock = SimClock(START, 10.0)
    out = _Collect()

    def boot(version: str, slot: str, site: str) -> TelemetrySink:
        ident = Identity(name, site, "generic-x86-64", version, slot)
        cfg = TelemetryConfig(window_s=10.0, data_dir=str(data))
        return TelemetrySink(cfg, ident, out, clock=clock, primary_model="inspect-primary",
                             timer=False)  # fmt: skip

    def agent(kind: str, detail: str) -> None:  # the update agent's line (agent_state.EventLog)
        line = {"type": "event", "kind": kind, "alert": False, "detail": detail,
                "time": round(clock(), 3)}  # fmt: skip
        with events.open("a") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")

    sink = boot("1.4.0", "a", "plant-a")
    _frames(sink, clock, 30, "inspect-primary")
    _frames(sink, clock, 20, "inspect-fallback")
    agent("update.installed", "2.0.0 in slot b")
    _frames(sink, clock, 10, "inspect-primary")
    sink.close()  # the reboot
    clock.now += 5.0
    sink = boot("2.0.0", "b", "plant-b")
    agent("update.committed", "2.0.0 passed its health gate")
    _frames(sink, clock, 30, "inspect-primary")
    sink.publish({"type": "event", "kind": "source_reopened", "reason": "back",
                  "ts": round(clock(), 3)})  # fmt: skip
    _frames(sink, clock, 9.5, "inspect-primary")
    sink.close()
    return out.messages


def newest_of_real(messages: list[dict[str, Any]]) -> dict[str, Any]:
    want = newest([{**m, "alert": bool(m.get("alert"))} for m in messages])
    del want["alerts"]
    return want


def stored(store: Store, devices: list[str]) -> tuple[int, int]:
    """(windows, events) of ``devices`` (the database may hold other devices)."""
    marks = ", ".join("?" * len(devices))
    return tuple(  # type: ignore[return-value]
        int(store.query(f"SELECT COUNT(*) FROM {table} WHERE device IN ({marks})", devices)[0][0])
        for table in ("windows", "events")
    )


def wait_stored(db: str, devices: list[str], want: tuple[int, int], timeout: float = 60.0) -> None:
    """Until ``devices`` have ``want`` (windows, events) stored."""
    deadline = time.monotonic() + timeout
    n = (0, 0)
    while time.monotonic() < deadline:
        store = Store.open(db)
        n = stored(store, devices)
        store.close()
        if all(got >= need for got, need in zip(n, want, strict=True)):
            return
        time.sleep(0.1)
    pytest.fail(f"only {n} of {want} (windows, events) stored within {timeout} s")


def _through_two_ingesters(broker: Broker, db: str, tmp: Path) -> None:
    devices = {f"cam-{i}": device_history(tmp, f"cam-{i}") for i in range(6)}
    stream = [m for msgs in devices.values() for m in reversed(msgs)]  # newest first
    want = (sum(m["type"] == "window" for m in stream), sum(m["type"] == "event" for m in stream))
    a = IngestProcess(broker.port, db, f"ord-a-{tmp.name}", tmp / "a.log")
    b = IngestProcess(broker.port, db, f"ord-b-{tmp.name}", tmp / "b.log")
    publish_all(broker.port, stream)
    random.Random(7).shuffle(stream)
    publish_all(broker.port, stream[: len(stream) // 2])  # re-sent, shuffled: stored once
    wait_stored(db, list(devices), want)
    for ing in (a, b):
        ing.stop()
    store = Store.open(db)
    assert stored(store, list(devices)) == want
    for name, msgs in devices.items():
        row = row_of(store, name)
        assert (row.version, row.slot, row.site) == ("2.0.0", "b", "plant-b")
        assert row.last_update == "update.committed: 2.0.0 passed its health gate"
        check_row(row, newest_of_real(msgs))
    store.close()


@pytest.mark.integration
def test_reversed_real_devices_through_two_ingesters_sqlite(broker: Broker, tmp_path: Path) -> None:
    _through_two_ingesters(broker, str(tmp_path / "fleet.db"), tmp_path)


@pytest.mark.integration
def test_reversed_real_devices_through_two_ingesters_postgresql(
    broker: Broker, tmp_path: Path, pg_url: str
) -> None:
    _through_two_ingesters(broker, pg_url, tmp_path)
