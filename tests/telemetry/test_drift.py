"""PSI and the drift detector, then drift end to end: the reference model on a real broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.inference.pipeline import Pipeline, PipelineConfig
from appliance.inference.sink import TeeSink
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.drift import DriftDetector, psi
from appliance.telemetry.identity import Identity
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
from appliance.telemetry.setup import references
from appliance.telemetry.uplink import TelemetrySink
from tests.inference.mqtt_broker import Broker, Subscriber
from tests.telemetry.helpers import REFERENCE_PACKAGE, SimClock, lit_split, wait_for

IDENT = Identity(device="cam-1", site="plant-a", target="generic-x86-64", version="1.2.0", slot="a")
TOPIC = IDENT.topic("edgekiln")


def test_psi_is_zero_for_equal_histograms_and_grows_with_the_shift() -> None:
    ref = {"a": 0.25, "b": 0.25, "c": 0.5}
    assert psi({"a": 25, "b": 25, "c": 50}, ref) == pytest.approx(0.0, abs=1e-12)
    small = psi({"a": 30, "b": 25, "c": 45}, ref)
    large = psi({"a": 70, "b": 20, "c": 10}, ref)
    assert 0 < small < 0.1 < large
    # A label never seen is smoothed, not infinite.
    assert psi({"a": 100}, ref) < 20


def test_detector_waits_for_min_samples_and_alerts_once_per_episode() -> None:
    d = DriftDetector({"a": 0.5, "b": 0.5}, threshold=0.2, min_samples=100, windows=2)
    first = d.add_window({"a": 60})
    assert first.psi is None and first.alert is None  # 60 < 100 samples: no verdict
    second = d.add_window({"a": 60})
    assert second.psi is not None and second.psi > 0.2 and second.alert == "drift"
    assert d.add_window({"a": 60}).alert is None  # still drifted: no second alert
    d.add_window({"a": 30, "b": 30})
    cleared = d.add_window({"a": 30, "b": 30})
    assert cleared.alert == "drift_cleared" and not cleared.drifted


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


def run_stream(broker: Broker, tmp_path: Path, split: Path, frames: int) -> list[dict[str, object]]:
    """The reference model over ``split`` (looped), simulated 30 fps, telemetry to the broker."""
    sub = Subscriber(broker.port, TOPIC)
    clock = SimClock()
    cfg = TelemetryConfig(window_s=4.0, drift_psi=0.2, drift_min_samples=200, drift_windows=3)
    mqtt = MqttConfig(
        host="127.0.0.1",
        port=broker.port,
        topic=TOPIC,
        buffer_dir=str(tmp_path / "buf"),
        reconnect_max_s=1,
    )
    refs, primary = references(str(REFERENCE_PACKAGE))
    tele = TelemetrySink(
        cfg, IDENT, MqttSink(mqtt), references=refs, primary_model=primary, clock=clock, timer=False
    )
    wait_for(lambda: tele.uplink.connected, what="the uplink to connect")
    pipe_cfg = PipelineConfig(
        model=str(REFERENCE_PACKAGE),
        source=f"npz:{split}?loop=1",
        backends=["onnxruntime"],
        max_frames=frames,
    )
    Pipeline(pipe_cfg, sink=TeeSink([tele])).run(threading.Event(), on_frame=clock.tick)
    expected_windows = frames // 120 + (1 if frames % 120 else 0)
    wait_for(
        lambda: sum(t.endswith("/windows") for t, _ in sub.messages) >= expected_windows,
        what=f"{expected_windows} windows",
    )
    sub.close()
    return [dict(m, topic=t) for t, m in sub.messages]


def test_reference_stream_raises_no_drift(broker: Broker, tmp_path: Path) -> None:
    split = lit_split(tmp_path, 1.0)
    messages = run_stream(broker, tmp_path, split, frames=1200)
    windows = [m for m in messages if m["type"] == "window"]
    assert len(windows) == 10
    assert not [m for m in messages if m.get("kind") == "drift"]
    psis = [w["drift"]["psi"] for w in windows if w["drift"]["psi"] is not None]  # type: ignore[index]
    assert psis and max(psis) < 0.2
    w = windows[3]
    assert (w["device"], w["site"], w["target"]) == ("cam-1", "plant-a", "generic-x86-64")
    assert w["topic"] == "edgekiln/plant-a/cam-1/windows"
    assert w["frames"] == 120 and w["fps"] == pytest.approx(30.0, rel=1e-6)
    assert w["mode"] == "primary" and w["model"] == "inspect-primary"
    assert set(w["latency_ms"]) >= {"pre", "infer", "post", "total"}  # type: ignore[arg-type]
    assert sum(w["predictions"].values()) == 120  # type: ignore[attr-defined]
    assert 0.5 < w["top1_mean"] <= 1.0  # type: ignore[operator]
    assert {"mem_used_mb", "mem_available_mb", "uptime_s", "temp_c"} <= set(w["system"])  # type: ignore[arg-type]
    assert not [m for m in messages if m["type"] == "result"]  # per-frame results off by default


def test_a_lighting_change_raises_drift_within_the_configured_windows(
    broker: Broker, tmp_path: Path
) -> None:
    split = lit_split(tmp_path, 0.6)  # 40 % darker: the model leans towards "ok"
    messages = run_stream(broker, tmp_path, split, frames=1200)
    drift = [m for m in messages if m.get("kind") == "drift"]
    assert len(drift) == 1, drift  # one alert per episode
    alert = drift[0]
    assert alert["alert"] is True and alert["psi"] > 0.2  # type: ignore[operator]
    assert alert["samples"] >= 200 and alert["topic"].endswith("/events")  # type: ignore[operator, union-attr]
    assert alert["reference"] == refs_of_package()
    windows = [m for m in messages if m["type"] == "window"]
    # min_samples 200 at 120 frames a window: the verdict is possible from the 2nd window on.
    first_drifted = next(i for i, w in enumerate(windows) if w["drift"]["drifted"])  # type: ignore[index]
    assert first_drifted <= 2


def refs_of_package() -> dict[str, float]:
    return references(str(REFERENCE_PACKAGE))[0]["inspect-primary"]
