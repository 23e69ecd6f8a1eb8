"""The Update screen installs the bundle it showed, and quotes no bytes of a file it refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.device import Device
from appliance.slots.state import BootState
from appliance.state import load_state
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH, NEW_VERSION, TARGET, _bundle, _slot_image
from tests.tui.conftest import Keys, actions, run_app, wait_for

OLDER = "0.5.0"  # same security_version as the device's floor: the policy alone accepts it


def app_for(device: Device) -> TechnicianApp:
    return TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)


def text_of(app: TechnicianApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


async def verify_typed(app: TechnicianApp, keys: Keys, path: Path) -> None:
    await keys("5", "tab")
    app.screen.query_one("#path").value = str(path)  # type: ignore[attr-defined]
    await keys("enter")


def good_bundle(device: Device) -> Path:
    return next(Path(g) for g in device.usb_globs) / "edgekiln-demo-1.1.0.bundle"


@pytest.mark.parametrize("how", ["replaced", "rewritten in place"])
def test_update_installs_what_it_showed_not_what_the_path_holds_later(
    device: Device, tmp_path: Path, how: str
) -> None:
    """Verify 1.1.0, swap the file for a valid 0.5.0 before pressing i: 0.5.0 never lands."""
    shown = tmp_path / "stick" / "update.bundle"
    shown.parent.mkdir()
    shutil.copyfile(good_bundle(device), shown)
    older = _bundle(OLDER, 1, TARGET)
    slot_b = device.slot_targets["B"].read_bytes()
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "update: swapped file")
        await verify_typed(app, keys, shown)
        assert text_of(app, "#manifest").startswith("VERIFIED update.bundle")
        assert f"version           {NEW_VERSION}" in text_of(app, "#manifest")
        if how == "replaced":
            swap = shown.with_suffix(".new")
            swap.write_bytes(older)
            os.replace(swap, shown)
        else:
            with shown.open("r+b") as f:
                f.write(older)
                f.truncate()
        await keys("i", "y")
        await wait_for(pilot, lambda: "install" in text_of(app, "#message") and "..." not in
                       text_of(app, "#message"))  # fmt: skip

    run_app(app, body)
    installed = load_state(device.data_dir).installed
    if how == "replaced":  # the open file still holds 1.1.0: that is installed
        assert installed is not None and installed.version == NEW_VERSION
        assert device.slot_targets["B"].read_bytes() == _slot_image(NEW_VERSION)
        assert device.loader().read() == BootState("A", "B", 1)
    else:  # the bytes changed under the shown manifest: refused by its chunk digests
        assert installed is None or installed.version != OLDER
        assert device.slot_targets["B"].read_bytes() != _slot_image(OLDER)
        state = device.loader().read()  # the target was deactivated first, never tried
        assert state.committed == "A" and state.trying is None
        assert actions(device)[-1]["action"] == "update.failed"
        assert slot_b != _slot_image(OLDER)
    versions = [a.get("version") for a in actions(device) if a["action"] == "update.install"]
    assert versions == [NEW_VERSION]


SECRET = b"s3cr3tPW"


@pytest.mark.parametrize("where", [0, 148, 124])  # name, checksum, size fields
def test_a_refused_file_is_not_quoted_on_screen_or_in_the_action_log(
    device: Device, tmp_path: Path, where: int
) -> None:
    """Pointing the Update screen at any readable file discloses none of its bytes."""
    secret = tmp_path / "secret.bundle"
    block = bytearray(b"x" * 1024)
    if where == 124:  # a plausible name and type, so the parser reaches the size field
        block[0:100] = b"manifest.json".ljust(100, b"\0")
        block[156:157] = b"0"
        block[345:500] = bytes(155)  # no name prefix
    block[where : where + len(SECRET)] = SECRET
    if where != 148:  # a valid checksum, so the parser gets past it to the field
        block[148:156] = b" " * 8
        block[148:156] = b"%06o\0 " % sum(block[:512])
    secret.write_bytes(bytes(block))
    app = app_for(device)
    seen: list[str] = []

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "update: refused secret")
        await verify_typed(app, keys, secret)
        seen.append(text_of(app, "#manifest"))

    run_app(app, body)
    assert seen[0].startswith("REFUSED secret.bundle")
    logged = device.actions_path.read_bytes()
    assert b"update.refused" in logged
    for part in (SECRET, SECRET[:4], SECRET[4:]):
        assert part.decode() not in seen[0]
        assert part not in logged
