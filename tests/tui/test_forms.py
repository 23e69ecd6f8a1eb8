"""Network, Camera, Model check and Update screens driven with the Pilot (real files written)."""

from __future__ import annotations

import calendar
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from appliance.device import Device
from appliance.inference.pipeline import load_config
from appliance.slots.state import BootState
from appliance.state import load_state
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH, NEW_VERSION, _slot_image
from tests.tui.conftest import Keys, actions, run_app, wait_for


def app_for(device: Device) -> TechnicianApp:
    return TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)


def text_of(app: TechnicianApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def network_files(device: Device) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(device.network_dir.iterdir())}


async def to_static(keys: Keys) -> None:
    """From the Network screen: focus the mode select and choose Static IPv4."""
    await keys("tab", "enter", "down", "enter", "tab")  # the interface list has focus on open


@pytest.mark.parametrize(
    ("address", "gateway", "dns", "field", "message"),
    [
        ("192.168.1.300/24", "", "", "address", "not an IPv4 address"),
        ("192.168.1.20", "", "", "address", "add the prefix length"),
        ("192.168.1.0/24", "", "", "address", "network or broadcast"),
        ("10.0.0.5/24", "10.0.1.1", "", "gateway", "outside the subnet 10.0.0.0/24"),
        ("10.0.0.5/24", "10.0.0.5", "", "gateway", "device's own address"),
        ("10.0.0.5/24", "10.0.0.1", "9.9.9", "dns", "not IPv4 addresses: 9.9.9"),
    ],
)
def test_network_bad_input_refused_in_place(
    device: Device, address: str, gateway: str, dns: str, field: str, message: str
) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "network: bad input")
        await keys("2")
        await to_static(keys)
        await keys.type(address)
        for name, value in (("gateway", gateway), ("dns", dns)):
            app.screen.query_one(f"#{name}").value = value  # type: ignore[attr-defined]
        await keys("enter")
        error = app.screen.query_one(f"#{field}-error")
        assert error.display and message in str(error.render())
        assert "nothing was written" in text_of(app, "#message")
        assert not isinstance(app.screen, type(None)) and app.screen.__class__.__name__ == (
            "NetworkScreen"
        )  # no confirmation was asked

    run_app(app, body)
    assert network_files(device) == {}
    assert actions(device) == []


def test_network_static_written_atomically_and_logged(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "network: static IPv4")
        await keys("2")
        await to_static(keys)
        await keys.type("192.168.7.20/24")  # gateway and DNS are proposed: 192.168.7.1
        await keys("enter")
        assert app.screen.__class__.__name__ == "ConfirmScreen"
        await keys("y")
        assert "saved 10-edgekiln-eth0.network" in text_of(app, "#message")
        assert "demo device" in text_of(app, "#message")  # apply is simulated in the demo
        assert "static 192.168.7.20/24" in text_of(app, "#ifaces")
        assert keys.record() <= 40

    run_app(app, body)
    assert network_files(device) == {
        "10-edgekiln-eth0.network": "# written by appliance tui\n[Match]\nName=eth0\n\n"
        "[Network]\nAddress=192.168.7.20/24\nGateway=192.168.7.1\nDNS=192.168.7.1\n"
    }
    assert [a["action"] for a in actions(device)] == ["network.write", "network.apply"]


def test_network_focus_save_then_a_screen_key_switches(device: Device) -> None:
    """Open: the interface list has focus. After a save the digit keys switch tasks (they do
    not type into the last field). Cleared fields show words, never an address."""
    import re

    app = app_for(device)
    address_like = re.compile(r"\d+\.\d+")

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "network: save, then next task")
        await keys("2")
        assert app.screen.focused is app.screen.query_one("#iface")
        for name in ("address", "gateway", "dns"):
            hint = app.screen.query_one(f"#{name}").placeholder  # type: ignore[attr-defined]
            assert not address_like.search(hint), hint
        await to_static(keys)
        await keys.type("10.0.0.5/24")
        await keys("tab", "ctrl+u")  # the proposed gateway cleared: no other subnet comes back
        gateway = app.screen.query_one("#gateway")
        assert gateway.value == "" and not address_like.search(gateway.placeholder)  # type: ignore[attr-defined]
        await keys.type("10.0.0.254")
        await keys("enter", "y")
        assert "saved 10-edgekiln-eth0.network" in text_of(app, "#message")
        assert not isinstance(app.screen.focused, Input)
        await keys("3")
        assert app.screen.__class__.__name__ == "CameraScreen"
        await keys("2")
        assert app.screen.query_one("#gateway").value == "10.0.0.254"  # type: ignore[attr-defined]

    run_app(app, body)
    assert "Gateway=10.0.0.254\nDNS=10.0.0.1\n" in network_files(device)["10-edgekiln-eth0.network"]


def test_network_dhcp_on_second_interface_and_cancel(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "network: DHCP")
        await keys("2", "enter", "down", "enter", "tab", "tab", "enter")
        await keys("n")  # cancelled: nothing written
        assert network_files(device) == {}
        await keys("enter", "y")  # focus is back on Save
        assert keys.record() <= 40

    run_app(app, body)
    assert network_files(device) == {
        "10-edgekiln-wlan0.network": "# written by appliance tui\n[Match]\nName=wlan0\n\n"
        "[Network]\nDHCP=ipv4\n"
    }


def test_camera_test_capture_and_save(device: Device) -> None:
    app = app_for(device)
    before = device.pipeline_config.read_bytes()

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "camera: test and save")
        await keys("3", "s")  # save before a test is refused in place
        assert "test this source first" in text_of(app, "#source-error")
        assert device.pipeline_config.read_bytes() == before
        await keys("t")
        await wait_for(pilot, lambda: "resolution" in text_of(app, "#result"))
        result = text_of(app, "#result")
        assert "resolution 160x120" in result and "frames     30" in result
        fps = float(result.split("fps")[1].split()[0])
        assert 0 < fps < 20  # the 15 fps demo video is read at its own pace, not decoder speed
        preview = text_of(app, "#preview").splitlines()
        assert len(preview) == 12 and len(set("".join(preview))) > 3  # a real picture
        await keys("s", "y")
        assert keys.record() <= 40

    run_app(app, body)
    assert actions(device)[-1]["action"] == "camera.source"


def test_camera_ffmpeg_video_and_bad_source(device: Device, tmp_path: Path) -> None:
    video = tmp_path / "testsrc.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
         "-frames:v", "40", "-pix_fmt", "yuv420p", str(video)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "camera: typed source")
        await keys("3", "tab", "ctrl+u", "enter")
        assert "enter a device (/dev/video0)" in text_of(app, "#source-error")
        await keys.type("/nonexistent/cam.mp4")
        await keys("enter")
        assert "/nonexistent/cam.mp4 does not exist" in text_of(app, "#source-error")
        await keys("ctrl+u")
        await keys.type("ftp://x")
        await keys("enter")
        assert "unknown scheme ftp" in text_of(app, "#source-error")
        app.screen.query_one("#source").value = str(video)  # type: ignore[attr-defined]
        await keys("enter")
        await wait_for(pilot, lambda: "resolution" in text_of(app, "#result"))
        assert "resolution 320x240" in text_of(app, "#result")
        await keys("s", "y")  # the field was left after the test, so s saves

    run_app(app, body)
    assert load_config(device.pipeline_config).source == str(video)


def test_model_check_runs_selftest_and_keeps_the_report(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "model check")
        await keys("4")
        assert "no self-test has run" in text_of(app, "#report")
        await keys("r")
        await wait_for(pilot, lambda: "finished" in text_of(app, "#message"), timeout=120)
        report = text_of(app, "#report")
        assert "accuracy   top-1" in report and "p95" in report and "budget" in report
        assert keys.record() <= 40

    before = int(time.time())
    run_app(app, body)
    after = time.time()
    kept = json.loads((device.state_dir / "tui" / "selftest-last.json").read_text())
    assert kept["images"] > 0 and "infer_p95_ms" in kept
    # stamped with when it ran, not with the status clock the test (and the demo) pins
    ran = calendar.timegm(time.strptime(kept["when"], "%Y-%m-%d %H:%M:%S UTC"))
    assert before <= ran <= after and ran != DEMO_EPOCH
    again = app_for(device)

    async def reopen(pilot: Any) -> None:
        await pilot.press("4")
        await pilot.pause()
        assert f"{kept['top1']:.4f}" in text_of(again, "#report")
        await pilot.press("1")
        await wait_for(pilot, lambda: getattr(again.screen, "painted", False))
        assert f"top-1 {kept['top1']:.4f}" in text_of(again, "#status-table")

    run_app(again, reopen)


@pytest.mark.parametrize(
    ("downs", "refusal"),
    [
        (0, "RollbackError: bundle security_version 0 is below the committed 1"),
        (1, "WrongTargetError: bundle is for targets jetson-orin"),
        (2, "SignatureInvalidError: manifest.sig is not a valid signature"),
    ],
)
def test_update_refuses_bad_bundles_with_the_reason(
    device: Device, downs: int, refusal: str
) -> None:
    slot_b = device.slot_targets["B"].read_bytes()
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "update: refused")
        await keys("5", *["down"] * downs, "enter")
        shown = text_of(app, "#manifest")
        assert shown.startswith("REFUSED") and refusal in shown
        await keys("i")
        assert "verify a bundle first" in text_of(app, "#message")

    run_app(app, body)
    assert device.slot_targets["B"].read_bytes() == slot_b
    assert device.loader().read() == BootState()
    assert actions(device)[-1]["action"] == "update.refused"


def test_update_typed_path_checked_then_installed(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "update: typed path")
        await keys("5", "tab", "enter")
        assert "type the path of a .bundle file" in text_of(app, "#path-error")
        await keys.type("/nowhere/x.bundle")
        await keys("enter")
        assert "/nowhere/x.bundle is not a file" in text_of(app, "#path-error")
        assert device.loader().read() == BootState()
        good = next(Path(g) for g in device.usb_globs) / "edgekiln-demo-1.1.0.bundle"
        app.screen.query_one("#path").value = str(good)  # type: ignore[attr-defined]
        await keys("enter")
        assert text_of(app, "#manifest").startswith("VERIFIED")
        await keys("i", "y")  # the path field was left after verifying, so i installs
        await wait_for(pilot, lambda: "installed" in text_of(app, "#message"))

    run_app(app, body)
    assert device.loader().read() == BootState("A", "B", 1)


def test_update_shows_manifest_installs_and_offers_reboot(device: Device) -> None:
    app = app_for(device)

    async def body(pilot: Any) -> None:
        keys = Keys(pilot, "update: install from USB")
        await keys("5", "down", "down", "down", "enter")
        shown = text_of(app, "#manifest")
        assert shown.startswith("VERIFIED edgekiln-demo-1.1.0.bundle")
        assert f"version           {NEW_VERSION}" in shown
        assert "generic-x86-64" in shown and "demo release key" in shown
        assert "security version  2" in shown
        assert device.loader().read() == BootState()  # nothing written before the question
        await keys("i", "y")
        await wait_for(pilot, lambda: "installed" in text_of(app, "#message"))
        assert app.screen.query_one("#progress").percentage == 1.0  # type: ignore[attr-defined]
        await keys("b", "y")
        assert "demo device: a real device would reboot" in text_of(app, "#message")
        assert keys.record() <= 40

    run_app(app, body)
    assert device.slot_targets["B"].read_bytes() == _slot_image(NEW_VERSION)
    assert device.loader().read() == BootState("A", "B", 1)
    installed = load_state(device.data_dir).installed
    assert installed is not None and installed.version == NEW_VERSION
    assert [a["action"] for a in actions(device)] == [
        "update.install",
        "update.installed",
        "update.reboot",
    ]


def test_source_problem_knows_the_test_pattern_camera(tmp_path: Path) -> None:
    """The QEMU test profile's and the demo's camera is ``npz:``: the Camera screen accepted
    every source but that one ("unknown scheme npz://")."""
    from appliance.tui.screens.camera import source_problem

    pattern = tmp_path / "pattern.npz"
    pattern.write_bytes(b"")
    assert source_problem(f"npz:{pattern}?loop=1&fps=15") is None
    assert source_problem(f"npz:{tmp_path}/missing.npz") == f"{tmp_path}/missing.npz does not exist"
    assert "unknown scheme ftp" in (source_problem("ftp://x/y") or "")
