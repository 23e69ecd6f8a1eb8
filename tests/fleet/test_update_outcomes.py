"""Update outcomes: the agent's events.jsonl lines reach the fleet inventory over MQTT.

The update agent's own event log (appliance/ota/agent_state.py) writes the events; the device's
telemetry sink reads them back from events.jsonl and sends them; a real ``kiln fleet ingest``
stores them, and the inventory's "last update" is the latest outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.ota.agent_state import EventLog
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.identity import Identity
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
from appliance.telemetry.update_events import UpdateEventTail
from appliance.telemetry.uplink import TelemetrySink
from image.fleet.gates import stage_gate
from image.fleet.inventory import inventory
from image.fleet.store import Store
from tests.fleet.ingester import IngestProcess
from tests.inference.mqtt_broker import Broker

pytestmark = pytest.mark.integration


def _device(broker: Broker, data: Path, name: str) -> TelemetrySink:
    ident = Identity(device=name, site="plant-a", target="generic-x86-64", version="1.0.0",
                     slot="a")  # fmt: skip
    buffer = str(data / "edgekiln" / "mqtt-buffer")
    mqtt = MqttConfig(host="127.0.0.1", port=broker.port, topic=ident.topic("edgekiln"),
                      buffer_dir=buffer, reconnect_max_s=1)  # fmt: skip
    cfg = TelemetryConfig(window_s=60.0, data_dir=str(data))
    return TelemetrySink(cfg, ident, MqttSink(mqtt), timer=False)


def _wait_update(db: str, device: str, prefix: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    found = None
    while time.monotonic() < deadline:
        store = Store.open(db)
        rows = {r.device: r for r in inventory(store)}
        store.close()
        found = rows[device].last_update if device in rows else None
        if found and found.startswith(prefix):
            return found
        time.sleep(0.1)
    pytest.fail(f"{device}: last update {found!r}, waited for {prefix!r}")


def test_agent_outcomes_become_alerts_and_the_inventorys_last_update(
    broker: Broker, tmp_path: Path
) -> None:
    db = str(tmp_path / "fleet.db")
    ingester = IngestProcess(broker.port, db, f"ing-{broker.port}", tmp_path / "ingest.log")
    good, bad = tmp_path / "cam-1", tmp_path / "cam-2"
    events = EventLog(good / "edgekiln" / "events.jsonl")  # the update agent's own log
    events("update.polled", channel="stable")  # progress: not sent
    events("update.installed", detail="2.0.0 in slot B", version="2.0.0", slot="B")
    sink = _device(broker, good, "cam-1")
    assert sink.forward_updates() == 1
    assert _wait_update(db, "cam-1", "update.installed").endswith("2.0.0 in slot B")
    # The device reboots into B; the agent commits after the health gate. The telemetry
    # process restarted too: it resumes from its cursor, so nothing is sent twice.
    sink.close()
    events("update.committed", detail="2.0.0 passed its health gate", version="2.0.0")
    sink = _device(broker, good, "cam-1")
    sink.roll(time.time())  # what the window timer does every second
    assert _wait_update(db, "cam-1", "update.committed") == (
        "update.committed: 2.0.0 passed its health gate"
    )
    assert sink.forward_updates() == 0
    sink.close()
    # Another device: its update rolled back (written by the agent before telemetry started).
    EventLog(bad / "edgekiln" / "events.jsonl")(
        "update.rolled-back", alert=True, detail="2.0.0 did not commit", version="2.0.0"
    )
    other = _device(broker, bad, "cam-2")
    other.roll(time.time())
    assert _wait_update(db, "cam-2", "update.rolled-back").endswith("2.0.0 did not commit")
    other.close()
    time.sleep(0.5)
    assert "stored 3, duplicates 0" in ingester.stop()
    store = Store.open(db)
    kinds = [json.loads(r[0]) for r in store.query("SELECT body FROM events ORDER BY ts")]
    store.close()
    assert [k["kind"] for k in kinds] == ["update.installed", "update.committed",
                                          "update.rolled-back"]  # fmt: skip
    assert all(k["alert"] and k["source"] == "update-agent" for k in kinds)
    assert kinds[1]["version"] == "2.0.0" and kinds[1]["device"] == "cam-1"
    # The rollout gate reads the same outcomes: one committed, one rolled back.
    store = Store.open(db)
    verdict = stage_gate(store, ["cam-1", "cam-2"], since=0.0)
    store.close()
    assert (verdict.committed, verdict.rolled_back, verdict.advance) == (1, 1, False)
    status = subprocess.run(
        [sys.executable, "-m", "image.cli", "fleet", "status", "--db", db, "--no-anomalies"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "update.committed" in status.stdout and "update.rolled-back" in status.stdout


def test_the_tail_skips_torn_lines_and_follows_a_replaced_log(tmp_path: Path) -> None:
    log = tmp_path / "edgekiln" / "events.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"kind": "update.installed", "time": 1}\n{"kind": "update.comm')
    tail = UpdateEventTail(tmp_path)
    assert [e["kind"] for _, e in tail.poll()] == ["update.installed"]
    tail.commit()
    with log.open("a") as handle:
        handle.write('itted", "time": 2}\nnot json\n{"kind": "fallback"}\n')
    assert [e["kind"] for _, e in tail.poll()] == ["update.committed"]
    tail.commit()
    assert UpdateEventTail(tmp_path).poll() == []  # the cursor survives a restart
    log.unlink()
    log.write_text('{"kind": "update.rolled-back", "time": 3}\n')  # replaced (a new inode)
    assert [e["kind"] for _, e in UpdateEventTail(tmp_path).poll()] == ["update.rolled-back"]
