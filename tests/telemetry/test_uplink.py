"""The telemetry sink: outages buffered in order, config to topic, results policy, rotation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.inference.pipeline import Pipeline, load_config
from appliance.inference.sink import JsonlSink
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.errors import TelemetryError
from appliance.telemetry.identity import Identity
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
from appliance.telemetry.system import SystemSampler, temperatures
from appliance.telemetry.uplink import TelemetrySink
from tests.inference.mqtt_broker import Broker, Subscriber
from tests.telemetry.helpers import REFERENCE_PACKAGE, SimClock, wait_for

pytestmark = pytest.mark.integration
IDENT = Identity(device="cam-9", site="plant-b", target="generic-x86-64", version="1.0.0", slot="b")
TOPIC = IDENT.topic("edgekiln")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def result(i: int, label: str = "ok") -> dict[str, object]:
    return {
        "type": "result",
        "frame": i,
        "top": [{"label": label, "score": 0.9}],
        "model": "m",
        "version": "1",
        "backend": "onnxruntime",
        "degraded": False,
        "ms": {"capture": 1.0, "pre": 0.5, "infer": 2.0 + i % 3, "post": 0.1},
    }


def test_broker_down_windows_are_buffered_on_data_and_delivered_in_order(
    broker: Broker, tmp_path: Path
) -> None:
    sub = Subscriber(broker.port, TOPIC)
    broker.stop()
    clock = SimClock(fps=10)
    mqtt = MqttConfig(
        host="127.0.0.1",
        port=broker.port,
        topic=TOPIC,
        buffer_dir=str(tmp_path / "data/buf"),
        reconnect_max_s=1,
    )
    tele = TelemetrySink(
        TelemetryConfig(window_s=1.0), IDENT, MqttSink(mqtt), clock=clock, timer=False
    )
    for i in range(300):  # 30 simulated windows while the broker is down
        tele.publish(result(i))
        clock.tick()
    tele.roll(clock() + 0.5)  # past the 30th window's end (float steps of 0.1 s)
    wait_for(lambda: len(tele.uplink.buffer) >= 30, what="30 windows in the disk buffer")
    assert tele.windows_sent == 30 and not tele.uplink.connected
    lines = [
        x
        for seg in (tmp_path / "data/buf").glob("seg-*.log")
        for x in seg.read_bytes().splitlines()
    ]
    # An older version rolled back to reads only "r" and "e" lines (docs/decisions.md §10).
    assert len(lines) == 30 and all(x.startswith(b'e{"type":"window"') for x in lines)
    broker.start()
    wait_for(
        lambda: sum(t.endswith("/windows") for t, _ in sub.messages) >= 30,
        timeout=30,
        what="the buffered windows after the broker returned",
    )
    starts = [m["ts_start"] for t, m in sub.messages if t.endswith("/windows")]
    assert starts == sorted(starts) and len(set(starts)) == 30  # in order, none lost
    firsts = {m["id"]: m for t, m in sub.messages if t.endswith("/windows")}  # at-least-once
    assert sum(m["frames"] for m in firsts.values()) == 300
    tele.close()
    sub.close()


def test_pipeline_config_with_telemetry_publishes_windows_under_site_and_device(
    broker: Broker, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "edgekiln").mkdir(parents=True)
    (data / "edgekiln" / "site").write_text("plant-c\n")
    cfg_path = tmp_path / "pipeline.json"
    cfg_path.write_text(
        json.dumps(
            {
                "model": str(REFERENCE_PACKAGE),
                "source": f"npz:{REFERENCE_PACKAGE}/reference.npz?loop=1&fps=200",
                "backends": ["onnxruntime"],
                "max_frames": 400,
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "buffer_dir": str(data / "buf"),
                    "reconnect_max_s": 1,
                },
                "telemetry": {"window_s": 0.5, "data_dir": str(data), "target": "generic-x86-64"},
            }
        )
    )
    cfg = load_config(cfg_path)
    sub = Subscriber(broker.port, "edgekiln/plant-c")
    Pipeline(cfg).run(threading.Event())
    device = (data / "edgekiln" / "device-id").read_text().strip()  # made once, on data
    assert device.startswith("dev-")

    def frames() -> int:  # the windows arrive over MQTT after the run: wait for all of them
        return sum(m["frames"] for t, m in list(sub.messages) if t.endswith("/windows"))

    wait_for(lambda: frames() >= 400, what="windows holding all 400 frames")
    topics = {t for t, _ in sub.messages}
    assert f"edgekiln/plant-c/{device}/windows" in topics
    w = next(m for t, m in sub.messages if t.endswith("/windows"))
    assert w["device"] == device and w["site"] == "plant-c" and w["id"].startswith(device)
    assert frames() == 400
    sub.close()


def test_sampled_results_are_rate_capped_and_the_byte_budget_stops_them() -> None:
    sent: list[dict[str, object]] = []

    class Collect:
        def publish(self, record: dict[str, object]) -> None:
            sent.append(record)

        def close(self) -> None:
            pass

    clock = SimClock(fps=30)
    cfg = TelemetryConfig(window_s=60, results="sample", results_per_min=6, budget_mb_day=0.001)
    tele = TelemetrySink(cfg, IDENT, Collect(), clock=clock, timer=False)
    for i in range(30 * 60):  # one simulated minute at 30 fps
        tele.publish(result(i))
        clock.tick()
    results = [m for m in sent if m["type"] == "result"]
    assert 1 <= len(results) < 6  # at most 6 a minute, and the 1 kB budget ends them early
    budget = [m for m in sent if m.get("kind") == "budget_exceeded"]
    assert len(budget) == 1 and budget[0]["alert"] is True
    assert all(m["device"] == "cam-9" and m["site"] == "plant-b" and m["id"] for m in sent)


def test_bad_telemetry_settings_are_refused_naming_the_field() -> None:
    with pytest.raises(TelemetryError, match="site"):
        TelemetryConfig(site="a/b").check()
    with pytest.raises(TelemetryError, match="window_s"):
        TelemetryConfig(window_s=0).check()


def test_results_jsonl_is_rotated_at_its_size_cap(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "results.jsonl", max_bytes=10_000, flush_every=0.01)
    for i in range(2000):
        sink.publish(result(i))
        if i % 100 == 0:
            sink.flush()
    sink.close()
    current, old = tmp_path / "results.jsonl", tmp_path / "results.jsonl.1"
    assert old.exists() and old.stat().st_size < 20_000 and current.stat().st_size < 10_000
    kept = [json.loads(x) for x in (old.read_text() + current.read_text()).splitlines()]
    frames = [r["frame"] for r in kept]
    assert frames == list(range(frames[0], 2000))  # the newest results, in order, none torn


def test_system_sampler_reads_sensors_and_says_when_there_are_none(tmp_path: Path) -> None:
    sys_root = tmp_path / "sys"
    zone = sys_root / "class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("x86_pkg_temp\n")
    (zone / "temp").write_text("61500\n")
    hw = sys_root / "class/hwmon/hwmon1"
    hw.mkdir(parents=True)
    (hw / "name").write_text("coretemp\n")
    (hw / "temp2_input").write_text("58000\n")
    assert temperatures(sys_root) == {
        "zone:x86_pkg_temp:0": 61.5,
        "hwmon:coretemp:temp2": 58.0,
    }
    with_sensors = SystemSampler(tmp_path, sys_root=sys_root).sample()
    assert with_sensors["temp_max_c"] == 61.5 and "temp_note" not in with_sensors
    bare = SystemSampler(tmp_path, sys_root=tmp_path / "empty").sample()
    assert bare["temp_c"] == {} and "no thermal zone" in str(bare["temp_note"])
    assert float(bare["mem_available_mb"]) > 0 and 0 <= float(bare["data_used_pct"]) <= 100  # type: ignore[arg-type]
