"""The agent's window, reboot policies and its CLI (``appliance update run`` / ``status``)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from appliance.bundle import Keyring
from appliance.ota import agent_state
from appliance.ota.agent_config import parse_window
from tests.bundle.test_cli import run as run_cli

from .agent_kit import make_device, publish_to, release
from .channelserver import Server


def _local(hour: int, minute: int = 0) -> float:
    return dt.datetime(2026, 12, 5, hour, minute).timestamp()


def test_window_is_local_time_and_crosses_midnight() -> None:
    w = parse_window("22:30-04:00")
    assert w is not None
    assert w.allows(_local(23)) and w.allows(_local(3, 59)) and not w.allows(_local(4))
    assert w.next_open(_local(12)) == _local(22, 30)
    assert w.next_open(_local(23)) == _local(23)


def test_outside_the_window_nothing_is_downloaded(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www, config={"window": "01:00-05:00"}, clock=_local(12))
    publish_to(www, release(d.dev, tmp_path, 2, "2.0.0"))
    www.clear()
    assert d.run() == "update.outside-window"
    assert not [h for h in www.hits if "/targets/" in h.path]
    assert d.events()[-1]["next_window"] == dt.datetime(2026, 12, 6, 1, 0).timestamp()
    d.clock = _local(2)
    assert d.run() == "update.rebooting"  # policy "now" in these tests


def test_reboot_policies(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www, config={"reboot": "manual"})
    publish_to(www, release(d.dev, tmp_path, 2, "2.0.0"))
    assert d.run() == "update.reboot-pending"
    assert d.run() == "update.reboot-pending"  # installed, waits for a person
    assert d.reboots == []
    e = make_device(tmp_path, www, name="e", config={"reboot": "window", "window": "01:00-05:00"},
                    clock=_local(4, 59))  # fmt: skip
    e.dev.key, e.dev.keyring = d.dev.key, d.dev.keyring
    assert e.run() == "update.rebooting"  # downloaded and installed inside the window
    f = make_device(tmp_path, www, name="f", config={"reboot": "window", "window": "01:00-05:00"},
                    clock=_local(4, 59))  # fmt: skip
    f.dev.key, f.dev.keyring = d.dev.key, d.dev.keyring
    assert f.run() == "update.rebooting"
    assert f.dev.loader().read().trying == "B"
    # a device that installed but whose window closed before the reboot waits for the next one
    state = agent_state.load(f.data)
    assert state.trying is not None
    f.clock = _local(12)
    assert f.run() == "update.reboot-deferred"
    f.clock = _local(1, 30)
    assert f.run() == "update.rebooting"


def test_cli_run_and_status(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www)
    publish_to(www, release(d.dev, tmp_path, 2, "2.0.0"))
    device = {"product": "powercut", "target": "generic-x86-64", "version": "1.0.0"}
    update = {"channels": [d.channel], "tuf_root": str(d.tuf_root), "window": "00:00-23:59"}
    (tmp_path / "device.json").write_text(json.dumps(device))
    (tmp_path / "update.json").write_text(json.dumps(update))
    ring = tmp_path / "keyring.json"
    ring.write_bytes(Keyring.to_bytes(d.dev.keyring))
    env = {"EDGEKILN_DEVICE_CONFIG": str(tmp_path / "device.json"),
           "EDGEKILN_UPDATE_CONFIG": str(tmp_path / "update.json")}  # fmt: skip
    common = ["--data-dir", str(d.data)]
    done = run_cli(
        "appliance", "update", "run", *common, "--loader", f"grub:{d.dev.root / 'esp'}",
        "--booted", "A", "--keyring", str(ring), "--slot", f"A={d.dev.slots['A']}",
        "--slot", f"B={d.dev.slots['B']}", "--reboot-policy", "manual", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "update.reboot-pending"
    done = run_cli("appliance", "update", "status", *common, env=env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"channel           {d.channel}" in out
    assert "pending           2.0.0 installed in slot B, not committed" in out
    assert "last outcome      update.reboot-pending" in out
    assert "next window       00:00-23:59 local" in out
