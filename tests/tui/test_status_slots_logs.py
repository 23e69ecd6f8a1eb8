"""Status, Slots and Logs screens driven with the Pilot against a real demo device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from appliance.device import Device, DeviceConfig
from appliance.slots.state import BootState
from appliance.state import SlotRecord, load_state, record_installed
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH
from tests.tui.conftest import Keys, actions, run_app, wait_for


def app_for(device: Device) -> TechnicianApp:
    return TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)


def text_of(app: TechnicianApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def test_status_shows_device_slots_model_and_rates(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: getattr(app.screen, "painted", False))
        shown = text_of(app, "#status-table")
        assert "demo-0001" in shown and "generic-x86-64" in shown
        assert "running A, committed A, next boot A" in shown
        assert "on onnxruntime" in shown
        assert "fps        9.8" in shown or "fps        10.0" in shown
        assert "budget" in shown and "47.5 C" in shown
        assert "[OK] primary" in shown

    run_app(app, body)


def test_status_reports_degraded_mode_with_reason(device: Device) -> None:
    with device.events_path.open("a") as handle:
        handle.write(
            json.dumps({"ts": DEMO_EPOCH, "kind": "degraded", "reason": "no model loads anywhere"})
            + "\n"
        )
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: getattr(app.screen, "painted", False))
        assert "[!!] degraded: no model loads anywhere" in text_of(app, "#status-table")

    run_app(app, body)


def test_slots_rollback_and_mark_good_ask_and_log(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: roll back to the other slot")
        await keys("6")
        assert "A     committed" in text_of(app, "#slots-table")
        assert "B     inactive   0.9.5 (security 1)" in text_of(app, "#slots-table")
        await keys("r", "n")  # the question, answered no: nothing changes
        assert device.loader().read() == BootState()
        await keys("r", "y")
        assert device.loader().read() == BootState("A", "B", 1)
        assert "B     tried" in text_of(app, "#slots-table")
        assert keys.record() <= 40
        marks = Keys(pilot, "slots: mark good")
        await marks("g")  # the running slot A is committed already
        assert "already committed" in text_of(app, "#message")

    run_app(app, body)
    assert [a["action"] for a in actions(device)] == ["slots.rollback"]


def test_mark_good_commits_a_slot_on_trial(device: Device) -> None:
    loader = device.loader()
    loader.begin_try("B")
    record_installed(device.data_dir, SlotRecord("B", "1.1.0", 2))
    device = Device(**{**device.__dict__, "booted_override": "B"})
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: mark good")
        await keys("6", "g", "y")
        assert keys.record() <= 40
        assert "B     committed" in text_of(app, "#slots-table")

    run_app(app, body)
    assert device.loader().read() == BootState("B")
    assert load_state(device.data_dir).security_floor == 2
    assert actions(device)[-1]["action"] == "slots.mark_good"


def test_logs_filter(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "logs: filter")
        await keys("7", "tab")
        await keys.type("source")
        await pilot.pause(0.2)
        lines = app.screen.shown["#log"]  # type: ignore[attr-defined]
        assert len(lines) == 2 and all("source" in line for line in lines)
        await keys.type(" xyz")
        lines = app.screen.shown["#log"]  # type: ignore[attr-defined]
        assert lines == ["no line matches 'source xyz'"]
        assert keys.record() <= 40

    run_app(app, body)


def test_a_bare_device_shows_every_screen_and_says_what_is_missing(tmp_path: Path) -> None:
    """No device.json, loader, keyring, model or results: nothing crashes, problems are named."""
    device = Device(
        config=DeviceConfig(),
        data_dir=tmp_path / "data",
        loader_spec=f"file:{tmp_path / 'missing' / 'dir'}/",  # not a usable file
        booted_override=None,
        keyring_path=tmp_path / "no-keyring.json",
        sys_root=tmp_path,
        usb_globs=(str(tmp_path),),
    )
    (tmp_path / "x.bundle").write_bytes(b"not a bundle")
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: getattr(app.screen, "painted", False))
        assert "[!!] no frames" in text_of(app, "#status-table")
        for key in "23467":
            await pilot.press(key)
            await pilot.pause()
        await pilot.press("5", "enter")
        await pilot.pause()
        assert "REFUSED x.bundle" in text_of(app, "#manifest")
        assert "KeyringError" in text_of(app, "#manifest")
        await pilot.press("6", "r")
        await pilot.pause()
        assert "roll back refused" in text_of(app, "#message")

    run_app(app, body)


def test_navigation_keys_and_the_modal_question(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await pilot.press("7", "tab", "1")  # in a text field a digit is text ...
        await pilot.pause()
        assert app.current_mode == "logs"
        await pilot.press("f5")  # ... and an F-key still switches
        await pilot.pause()
        assert app.current_mode == "update"
        await pilot.press("6", "r", "1", "f1", "q")  # a pending question blocks navigation
        await pilot.pause()
        assert app.current_mode == "slots" and app.screen.__class__.__name__ == "ConfirmScreen"
        await pilot.press("escape")
        await pilot.pause()
        assert "cancelled" in text_of(app, "#message")

    run_app(app, body)
    assert device.loader().read() == BootState()
    assert actions(device) == []


def test_logs_wrap_long_lines_and_show_the_technicians_actions(device: Device) -> None:
    """At 80 columns the end of a long agent line is on screen (wrapped), and the actions a
    technician took on this console are listed under the agent's log, filtered alike."""
    tail = "END-OF-A-LONG-LINE"
    with (device.log_dir / "edgekiln-agent.log").open("a") as log:
        log.write("2026-01-01T00:00:09 WARNING camera " + "x" * 120 + " " + tail + "\n")
    device.log_action("network.apply", iface="eth0", result="demo device: applied")
    app = app_for(device)

    async def body(pilot: Any) -> None:
        await pilot.press("7")
        await wait_for(pilot, lambda: bool(app.screen.shown.get("#actions")))  # type: ignore[attr-defined]
        await pilot.pause(0.2)
        agent = app.screen.query_one("#log")
        width = agent.size.width
        strips = [strip.text for strip in agent.lines]  # type: ignore[attr-defined]
        assert any(tail in s for s in strips)
        assert all(len(s.rstrip()) <= width for s in strips)
        actions_shown = app.screen.shown["#actions"]  # type: ignore[attr-defined]
        assert any("network.apply" in a and "iface=eth0" in a for a in actions_shown)
        await pilot.press("tab", *"camera")
        await pilot.pause(0.2)
        assert app.screen.shown["#actions"] == ["no action matches"]  # type: ignore[attr-defined]

    run_app(app, body)
