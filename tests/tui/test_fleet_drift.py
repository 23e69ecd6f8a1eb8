"""The fleet link (site, broker host) and the Status screen's drift line, with the Pilot."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from appliance.device import Device
from appliance.telemetry import settings
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.identity import Identity, resolve
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
from appliance.telemetry.uplink import TelemetrySink
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH
from tests.inference.mqtt_broker import free_port
from tests.tui.conftest import Keys, actions, run_app, wait_for


def app_for(device: Device) -> TechnicianApp:
    return TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)


def text_of(app: TechnicianApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def test_status_shows_the_latest_windows_drift_figures(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: "PSI" in text_of(app, "#drift"))
        assert "[OK] PSI 0.012 / threshold 0.2, 2950 samples (12 s ago)" in text_of(app, "#drift")

    run_app(app, body)


def test_a_drifting_sink_shows_drift_and_its_reason_on_status(
    device: Device, tmp_path: Path
) -> None:
    """A real telemetry sink on the device's data: one label only, against a 50/50 reference."""
    clock = [DEMO_EPOCH - 10.0]
    cfg = TelemetryConfig(window_s=1.0, data_dir=str(device.data_dir), drift_min_samples=40,
                          drift_windows=1)  # fmt: skip
    ident = Identity("cam-1", "plant-a", "generic-x86-64", "1.0.0", "a")
    uplink = MqttSink(
        MqttConfig(
            host="127.0.0.1", port=free_port(), reconnect_max_s=1, buffer_dir=str(tmp_path / "buf")
        )
    )  # nobody listens: buffered
    sink = TelemetrySink(cfg, ident, uplink, references={"m": {"ok": 0.5, "scratch": 0.5}},
                         primary_model="m", clock=lambda: clock[0], timer=False)  # fmt: skip
    for i in range(100):
        sink.publish({"type": "result", "frame": i, "model": "m", "version": "1",
                      "top": [{"label": "ok", "score": 0.9}], "degraded": False,
                      "ms": {"capture": 1.0, "pre": 1.0, "infer": 1.0, "post": 1.0}})  # fmt: skip
        clock[0] += 0.02
    sink.roll(clock[0] + 0.5)  # past the second window's end: two windows of about 50
    sink.close()
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: "PSI" in text_of(app, "#drift"))
        shown = text_of(app, "#drift")
        assert re.search(r"\[!!\] DRIFT PSI \d+\.\d{3} / threshold 0.2, \d{2} samples", shown)
        assert "m: prediction PSI" in shown and "is above the threshold 0.2" in shown

    run_app(app, body)


def test_fleet_link_site_and_broker_written_on_data_and_applied(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "fleet: site and broker host")
        await keys("9", "tab")
        assert app.screen.__class__.__name__ == "FleetScreen"
        app.screen.query_one("#site").value = ""  # type: ignore[attr-defined]
        await keys.type("plant-b")
        await keys("tab")
        await keys.type("fleet.plant-b.lan")
        await keys("enter")
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await keys("y")
        assert "saved on data; demo device" in text_of(app, "#message")
        assert "broker fleet.plant-b.lan (set on this device)" in text_of(app, "#current")
        keys.record()

    run_app(app, body)
    assert (device.state_dir / "site").read_text() == "plant-b\n"
    layer = json.loads((device.data_dir / settings.DEVICE_FILE).read_text())
    assert layer["mqtt"] == {"host": "fleet.plant-b.lan"}
    assert [a["action"] for a in actions(device)] == ["fleet.write", "fleet.apply"]
    # What the agent's telemetry reads at its restart: the new site and broker, no reflash.
    recipe = device.data_dir.parent / "slot-telemetry.json"
    recipe.write_text(
        '{"format": 1, "mqtt": {"host": "fleet.example", "port": 8883}, "telemetry": {}}'
    )
    mqtt, tele = settings.effective(None, None, slot=recipe, data=device.data_dir)
    assert mqtt is not None and (mqtt.host, mqtt.port) == ("fleet.plant-b.lan", 8883)
    assert tele is not None and resolve(tele).site == "plant-b"


def test_fleet_link_bad_input_refused_in_place(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "fleet: bad input")
        await keys("9")
        app.screen.query_one("#site").value = "plant b"  # type: ignore[attr-defined]
        app.screen.query_one("#broker").value = "bad_host!"  # type: ignore[attr-defined]
        await keys("tab", "enter")
        for field, needle in (("site", "letters, digits"), ("broker", "a host name")):
            error = app.screen.query_one(f"#{field}-error")
            assert error.display and needle in str(error.render())
        assert "nothing was written" in text_of(app, "#message")

    run_app(app, body)
    assert not (device.data_dir / settings.DEVICE_FILE).exists()
    assert actions(device) == []
