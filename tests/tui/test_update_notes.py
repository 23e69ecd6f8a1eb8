"""The install result the Update screen shows says what could not be checked (#17 hardening):
expiry without a trusted clock (docs/decisions.md §6), and a signed downgrade."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from appliance.device import Device
from appliance.slots.state import BootState
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import CHUNK, DEMO_EPOCH, PRODUCT, TARGET, _slot_image, demo_key
from tests.tui.conftest import Keys, actions, run_app, wait_for


def expiring_bundle(device: Device) -> Path:
    from appliance.bundle import PayloadSource, write_bundle

    out = io.BytesIO()
    write_bundle(
        out,
        key=demo_key(),  # type: ignore[arg-type]
        product=PRODUCT,
        targets=[TARGET],
        version="1.2.0",
        security_version=2,
        created=int(DEMO_EPOCH),
        expires=int(DEMO_EPOCH) + 86400,
        payloads=[PayloadSource("rootfs.img", "full", _slot_image("1.2.0"), "zstd")],
        chunk_size=CHUNK,
    )
    path = device.data_dir.parent / "expiring.bundle"
    path.write_bytes(out.getvalue())
    return path


def test_install_result_says_expiry_was_not_checked(device: Device) -> None:
    path = expiring_bundle(device)
    app = TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)

    def message() -> str:
        return str(app.screen.query_one("#message").render())

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "update: typed path, expiring bundle")
        await keys("5", "tab")
        app.screen.query_one("#path").value = str(path)  # type: ignore[attr-defined]
        await keys("enter", "i", "y")
        await wait_for(pilot, lambda: "installed" in message())
        assert "installed 1.2.0 into slot B" in message()
        assert "note: expiry not checked: the bundle expires at" in message()

    run_app(app, body)
    assert device.loader().read() == BootState("A", "B", 1)
    notes = actions(device)[-1]["notes"]
    assert any("expiry not checked" in note for note in notes)
