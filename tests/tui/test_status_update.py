"""The Status screen's update-agent section: the same rows as ``appliance update status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from appliance.device import Device
from appliance.ota import agent_state
from appliance.ota.agent_state import AgentState, Pending
from appliance.ota.fetch import JOURNAL, Journal
from appliance.tui.app import TechnicianApp
from appliance.tui.demo import DEMO_EPOCH
from tests.tui.conftest import run_app, wait_for

CHANNEL = "https://updates.example.com/acme/repo"


def _configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    config = tmp_path / "update.json"
    config.write_text(json.dumps({"channels": [CHANNEL], "window": "01:00-05:30",
                                  "rate": 200000, "reboot": "window"}))  # fmt: skip
    monkeypatch.setenv("EDGEKILN_UPDATE_CONFIG", str(config))
    return config


def _downloading(device: Device) -> None:
    """The agent's state mid-download: v2's delta pending, 3 MiB of it verified on data."""
    state = AgentState(
        channel=CHANNEL, last_poll=DEMO_EPOCH - 60, last_outcome="update.download-interrupted",
        last_detail="connection reset at byte 3145728", failures=1,
        next_attempt=DEMO_EPOCH + 60,
        pending=Pending("2.0.0", "delta", "acme/x/delta-ab.bundle", "cd" * 32, 9 << 20, "ef" * 32),
    )  # fmt: skip
    agent_state.save(device.data_dir, state)
    updates = device.data_dir / "updates"
    updates.mkdir(parents=True, exist_ok=True)
    journal = Journal(f"{CHANNEL}/targets/x", "12" * 32, 9 << 20, 3 << 20)
    (updates / JOURNAL).write_bytes(msgspec.json.encode(journal))


def _panel(app: TechnicianApp) -> Any:
    return app.screen.query_one("#update-agent")


def test_status_shows_the_update_agent_like_the_cli(
    device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _configure(tmp_path, monkeypatch)
    _downloading(device)
    app = TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)
    shown: list[str] = []

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: _panel(app).shown is not None)
        await pilot.pause()
        assert _panel(app).display, "the update section is hidden"
        shown.append(str(_panel(app).render()))

    run_app(app, body)
    text = shown[0]
    assert text.startswith(f"updates    {CHANNEL}"), text
    assert "delta 2.0.0 (3145728 of 9437184 bytes verified on data)" in text
    assert "bytes downloaded 3145728" in text
    assert "next window      01:00-05:30 local, next " in text
    assert "[!!] update.download-interrupted: connection reset at byte 3145728" in text
    # the command line reads the same state and says the same
    cli = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "update", "status", "--data-dir",
         str(device.data_dir), "--config", str(config)],
        capture_output=True, text=True, check=False, env={**os.environ},
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    for line in cli.stdout.splitlines():
        label, value = line[:17].strip(), line[17:].strip()
        if label in ("channel", "pending", "bytes downloaded", "last outcome"):
            assert value in text, (label, value, text)


def test_images_without_hands_off_updates_hide_the_section(
    device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKILN_UPDATE_CONFIG", str(tmp_path / "missing.json"))
    app = TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False)

    async def body(pilot: Any) -> None:
        await wait_for(pilot, lambda: _panel(app).shown is not None)
        await pilot.pause()
        assert not _panel(app).display

    run_app(app, body)
