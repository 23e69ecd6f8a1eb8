"""Slots screen: roll back means "back to the last committed slot"; cancel a pending update;
no slot action boots below the anti-rollback floor (docs/decisions.md §19). Driven with the
Pilot against a real demo device (GRUB environment files, slot images, data).

Module-level imports are only names that c1892db has, so that these tests run against that
commit and fail by their assertions.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import msgspec
import pytest

import appliance.state
from appliance.device import Device
from appliance.ota.installer import install
from appliance.slots import control
from appliance.slots.state import BootState
from appliance.state import SlotRecord, load_state, record_committed, state_path
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH
from tests.tui.conftest import Keys, actions, run_app


@pytest.fixture(autouse=True)
def running_config(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent and the slot commands read the running slot's device.json: the demo's."""
    monkeypatch.setenv("EDGEKILN_DEVICE_CONFIG", str(config_path(device)))


def config_path(device: Device) -> Any:
    return device.data_dir.parent / "etc" / "edgekiln" / "device.json"


def app_for(device: Device) -> TechnicianApp:
    return TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)


def text_of(app: TechnicianApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def snapshot(device: Device) -> tuple[bytes, ...]:
    """Both slots, both grubenv copies and the state file: what a refusal must not change."""
    grub = device.data_dir.parent / "boot" / "efi" / "grub"
    files = [device.slot_targets["A"], device.slot_targets["B"]]
    files += [grub / "grubenv", grub / "grubenv.bak", state_path(device.data_dir)]
    return tuple(path.read_bytes() for path in files)


def install_update(device: Device) -> None:
    """The real installer with the demo's signed 1.1.0 bundle (security_version 2) from USB."""
    control.reconcile(device.loader(), "A", device.data_dir)  # what the agent does at boot
    bundle = device.data_dir.parent / "usb" / "edgekiln-demo-1.1.0.bundle"
    with bundle.open("rb") as stream:
        install(
            stream,
            policy=device.policy(),
            loader=device.loader(),
            booted="A",
            targets=device.slot_targets,  # type: ignore[arg-type]
            data_dir=device.data_dir,
        )
    assert device.loader().read() == BootState("A", "B", 1)


def running(device: Device, slot: str, version: str, security_version: int) -> Device:
    """The same device booted from ``slot``, whose own device.json says version/level."""
    config = msgspec.structs.replace(
        device.config, version=version, security_version=security_version
    )
    doc = json.loads(config_path(device).read_text())
    doc.update(version=version, security_version=security_version)
    config_path(device).write_text(json.dumps(doc))
    return dataclasses.replace(device, config=config, booted_override=slot)


def note_slot(device: Device, record: SlotRecord) -> None:
    """Record what a slot holds (c1892db kept no such record: then nothing to do)."""
    note = getattr(appliance.state, "note_slot", None)
    if note is not None:
        note(device.data_dir, record)


def test_cancel_pending_update_then_roll_back_has_nothing_to_go_to(device: Device) -> None:
    install_update(device)
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: cancel pending update")
        await keys("6")
        assert "update pending: slot B is tried at the next boot" in text_of(app, "#slots-table")
        await keys("c")
        assert "Cancel the pending update in slot B?" in str(
            app.screen.query_one("#question").render()
        )
        await keys("y")
        assert keys.record() <= 40
        assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))
        assert "pending update cancelled" in text_of(app, "#message")
        assert "B     bad" in text_of(app, "#slots-table")
        before = snapshot(device)
        await keys("r")  # back to the last committed slot: we are on it, B is bad
        assert "roll back refused: slot B is marked bad; there is nothing to roll back to" in (
            text_of(app, "#message")
        )
        assert app.screen.__class__.__name__ == "SlotsScreen"  # no question was asked
        assert snapshot(device) == before
        await keys("c")
        assert "cancel refused: no update is pending" in text_of(app, "#message")
        assert snapshot(device) == before

    run_app(app, body)
    assert load_state(device.data_dir).installed is None
    assert [a["action"] for a in actions(device)] == ["slots.cancel_pending"]


def test_roll_back_with_an_update_pending_cancels_it(device: Device) -> None:
    """Was: "Roll back: boot slot B next?" pointing at the pending slot, changing nothing."""
    install_update(device)
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: roll back a pending update")
        await keys("6", "r")
        question = str(app.screen.query_one("#question").render())
        assert "Cancel the pending update in slot B?" in question
        await keys("y")
        assert keys.record() <= 40

    run_app(app, body)
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))
    assert load_state(device.data_dir).installed is None
    assert actions(device)[-1]["kind"] == "cancel"


def test_roll_back_leaves_a_running_trial(device: Device) -> None:
    install_update(device)
    device.loader().write(BootState("A", "B", 0))  # the loader spent the try: B runs
    on_b = running(device, "B", "1.1.0", 2)
    app = app_for(on_b)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: leave a trial")
        await keys("6")
        assert "slot B runs on trial; roll back returns to A" in text_of(app, "#slots-table")
        await keys("r")
        question = str(app.screen.query_one("#question").render())
        assert "Leave the trial of slot B and return to slot A?" in question
        await keys("y")

    run_app(app, body)
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))


def test_roll_back_below_the_floor_is_refused_and_says_why(device: Device) -> None:
    """#17 vuln 3: committed B (security_version 2); A still holds 1.0.0 (level 1)."""
    install_update(device)
    on_b = running(device, "B", "1.1.0", 2)
    control.commit_booted(on_b.loader(), "B", on_b.data_dir)
    assert load_state(device.data_dir).security_floor == 2
    before = snapshot(device)
    app = app_for(on_b)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: roll back below the floor")
        await keys("6", "r")
        assert app.screen.__class__.__name__ == "SlotsScreen"  # refused before any question
        message = text_of(app, "#message")
        assert (
            "roll back refused: slot A holds 1.0.0 (security_version 1), below this device's "
            "anti-rollback floor 2" in message
        )

    run_app(app, body)
    assert snapshot(device) == before
    assert device.loader().read() == BootState("B")
    assert actions(device) == []


def test_roll_back_to_a_release_at_the_floor_and_commit_keeps_state_and_loader_agreed(
    device: Device,
) -> None:
    install_update(device)
    on_b = running(device, "B", "1.1.0", 2)
    control.commit_booted(on_b.loader(), "B", on_b.data_dir)
    note_slot(device, SlotRecord("A", "1.0.9", 2))  # A: an older build, same level
    app = app_for(on_b)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "slots: roll back to the previous release")
        await keys("6", "r")
        assert "Roll back: try slot A (1.0.9) once" in str(
            app.screen.query_one("#question").render()
        )
        await keys("y")

    run_app(app, body)
    assert device.loader().read() == BootState("B", "A", 1)
    # A boots, passes its health gate and is committed: the state names A too, floor stays 2.
    on_a = running(device, "A", "1.0.9", 2)
    control.commit_booted(on_a.loader(), "A", on_a.data_dir)
    state = load_state(device.data_dir)
    assert device.loader().read().committed == "A"
    assert state.committed is not None and state.committed.slot == "A"
    assert state.committed.version == "1.0.9" and state.security_floor == 2


def test_slots_screen_shows_the_floor_of_the_running_slot(device: Device) -> None:
    record_committed(device.data_dir, SlotRecord("A", "1.0.0", 1))
    app = app_for(running(device, "A", "1.0.0", 3))  # the slot's own level is higher

    async def body(pilot: Any) -> None:
        await Keys(pilot, "slots: floor")("6")
        assert "security floor: 3" in text_of(app, "#slots-table")

    run_app(app, body)
