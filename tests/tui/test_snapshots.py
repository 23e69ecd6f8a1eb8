"""80x24 snapshots of every screen (pytest-textual-snapshot), on a fixed demo device.

Deterministic by construction: the demo lives at a fixed path, uses the inference tests' tiny
model (not the reference model, which may be regenerated), the clock is pinned, disk figures
are frozen, and nothing measured (FPS of a capture, self-test latency) is painted: the model
screen shows a fixed kept report.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.device import Device
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH, build_demo
from appliance.tui.devstatus import DeviceStatus, collect_status

SNAP_ROOT = Path("/tmp/edgekiln-tui-snapshot")
KEPT_REPORT = {
    "package": str(SNAP_ROOT / "model"), "model": "tiny", "version": "0.0.1",
    "backend": "onnxruntime", "device": "CPU", "file": "model.onnx", "images": 8,
    "top1": 1.0, "expected_top1": 1.0, "min_top1": 0.995, "infer_p50_ms": 0.21,
    "infer_p95_ms": 0.3, "total_p50_ms": 0.4, "total_p95_ms": 0.52, "budget_infer_ms": 20.0,
    "budget_total_ms": 27.0, "budget_factor": 1.0, "passed": True, "reasons": [],
    "when": "2026-01-01 00:00:00",
}  # fmt: skip


@pytest.fixture
def snap_device() -> Iterator[Device]:
    from tests.inference.fixtures import make_package

    # The path is painted in the snapshots: one test session at a time holds it.
    with open(f"{SNAP_ROOT}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(SNAP_ROOT, ignore_errors=True)
        model = make_package(SNAP_ROOT / "model")
        device = build_demo(SNAP_ROOT / "device", model, now=DEMO_EPOCH)
        yield device
        shutil.rmtree(SNAP_ROOT, ignore_errors=True)


def frozen_status(device: Device, now: float) -> DeviceStatus:
    return dataclasses.replace(collect_status(device, now), disk_used=3 << 30, disk_total=28 << 30)


def app_for(device: Device) -> TechnicianApp:
    return TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False, status_fn=frozen_status)


def until(check: Callable[[TechnicianApp], bool]) -> Callable[[Any], Any]:
    async def run_before(pilot: Any) -> None:
        for _ in range(200):
            if check(pilot.app):
                break
            await pilot.pause(0.05)
        await pilot.pause()

    return run_before


def painted(app: TechnicianApp) -> bool:
    return bool(getattr(app.screen, "painted", False))


def test_status(snap_compare: Any, snap_device: Device) -> None:
    assert snap_compare(app_for(snap_device), run_before=until(painted))


def test_network(snap_compare: Any, snap_device: Device) -> None:
    assert snap_compare(app_for(snap_device), press=["2"])


def test_network_refuses_bad_gateway(snap_compare: Any, snap_device: Device) -> None:
    keys = ["2", "tab", "enter", "down", "enter", "tab", *"10.0.0.5/24", "tab"]
    keys += ["ctrl+u", *"10.0.1.1", "enter"]
    keys = [{"/": "slash", ".": "full_stop"}.get(k, k) for k in keys]
    assert snap_compare(app_for(snap_device), press=keys)


def test_camera(snap_compare: Any, snap_device: Device) -> None:
    assert snap_compare(app_for(snap_device), press=["3"])


def test_model_with_kept_report(snap_compare: Any, snap_device: Device) -> None:
    kept = snap_device.state_dir / "tui" / "selftest-last.json"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(KEPT_REPORT))
    assert snap_compare(app_for(snap_device), press=["4"])


def test_update_verified_manifest(snap_compare: Any, snap_device: Device) -> None:
    assert snap_compare(app_for(snap_device), press=["5", "down", "down", "down", "enter"])


def test_update_refused(snap_compare: Any, snap_device: Device) -> None:
    assert snap_compare(app_for(snap_device), press=["5", "down", "down", "enter"])


def test_update_confirm_install(snap_compare: Any, snap_device: Device) -> None:
    keys = ["5", "down", "down", "down", "enter", "i"]
    assert snap_compare(app_for(snap_device), press=keys)


def test_slots(snap_compare: Any, snap_device: Device) -> None:
    assert snap_compare(app_for(snap_device), press=["6"])


def test_slots_update_pending(snap_compare: Any, snap_device: Device) -> None:
    from appliance.state import SlotRecord, record_installed

    snap_device.loader().begin_try("B")  # what an install leaves: B tried at the next boot
    record_installed(snap_device.data_dir, SlotRecord("B", "1.1.0", 2))
    assert snap_compare(app_for(snap_device), press=["6"])


def test_logs_filtered(snap_compare: Any, snap_device: Device) -> None:
    def loaded(app: TechnicianApp) -> bool:
        return "edgekiln-agent.log" in str(app.screen.query_one("#logs-title").render())

    async def run_before(pilot: Any) -> None:
        await pilot.press("7")
        await until(loaded)(pilot)
        await pilot.press("tab", *"warning")
        await pilot.pause()

    assert snap_compare(app_for(snap_device), run_before=run_before)
