"""The fault-injection route: only on images whose read-only slot enables it, token required;
the agent unit's record of an unclean exit; ``kiln status --events``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.api.faults import FAULT_MARKER, fault_injection_enabled
from appliance.api.server import HANG_AGENT, ApiConfig, ApiServer
from appliance.cli import cli as appliance_cli
from appliance.device import Device
from appliance.supervisor.exit_cli import exit_event
from image.build import rootfs
from image.cli import cli as kiln
from image.lan.client import DeviceClient
from image.lan.errors import DeviceRefused
from image.recipe import load_recipe
from tests.lan.test_build_wiring import fake_base
from tools.lan_rig import LanDevice, Release, wait_for

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@dataclasses.dataclass
class Served:
    server: ApiServer
    client: DeviceClient
    lan: LanDevice


def serve(lan: LanDevice, monkeypatch: pytest.MonkeyPatch, **options: object) -> Iterator[Served]:
    """An in-process API on 127.0.0.1 (the server class as ``appliance api serve`` builds it)."""
    for key, value in lan.env().items():
        if key.startswith("EDGEKILN_"):
            monkeypatch.setenv(key, value)
    device = dataclasses.replace(Device.from_env(), demo=True)
    server = ApiServer(ApiConfig(device, "127.0.0.1", 0, **options))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = int(server.server_address[1])
        client = DeviceClient("127.0.0.1", port, server.fingerprint)
        client.token = client.json("POST", "/v1/pair", {"code": lan.pair_code()})["token"]
        yield Served(server, client, lan)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def lan(tmp_path: Path) -> LanDevice:
    return LanDevice(tmp_path / "device", 1, Release(tmp_path / "release"))


@pytest.fixture
def production(lan: LanDevice, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """The API as every image without the marker has it (ApiConfig's defaults)."""
    yield from serve(lan, monkeypatch)


@pytest.fixture
def agent() -> Iterator[subprocess.Popen[bytes]]:
    """A real process standing in for the agent's MainPID."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_default_profile_has_no_fault_route(production: Served, lan: LanDevice) -> None:
    assert production.server.config.fault_injection is False
    with pytest.raises(DeviceRefused) as info:
        production.client.json("POST", HANG_AGENT)  # paired token: still no such route
    assert info.value.status == 404
    production.client.token = None
    with pytest.raises(DeviceRefused) as info:
        production.client.json("POST", HANG_AGENT)
    assert info.value.status == 404
    assert not [e for e in lan.events if e["kind"] == "api-auth-failed"]  # no token was asked


def test_product_recipes_and_default_overlay_carry_no_marker(tmp_path: Path) -> None:
    for path in RECIPES.glob("*.toml"):  # no shipped recipe (nor base) turns it on
        assert "fault_injection" not in tomllib.loads(path.read_text()).get("lan", {}), path
    for name in ("generic-x86-64.toml", "qemu-x86-64.toml", "intel-openvino.toml"):
        assert load_recipe(RECIPES / name, check_files=False).recipe.lan.fault_injection is False
    for enabled in (False, True):
        base = fake_base(tmp_path / f"base-{enabled}")
        config = rootfs.OverlayConfig(
            watchdog_sec=30,
            runtime_watchdog_sec=30,
            slots_spec="grub:/boot/efi",
            device_json=b"{}",
            keyring=None,
            lan_api=True,
            fault_injection=enabled,
        )
        out = rootfs.assemble_root(
            base, tmp_path / f"root-{enabled}", runtime=None, models={}, config=config
        )
        marker = out / str(FAULT_MARKER).lstrip("/")
        assert marker.is_file() is enabled
        unit = (out / "etc/systemd/system/edgekiln-agent.service").read_text()
        assert "ExecStopPost=-/opt/edgekiln/appliance/appliance agent-exited" in unit
        assert "WatchdogSec=30" in unit and "Type=notify" in unit


def test_a_marker_on_a_writable_file_system_does_not_enable_it(tmp_path: Path) -> None:
    marker = tmp_path / "data" / "etc" / "edgekiln" / "fault-injection"
    assert fault_injection_enabled(marker) is False  # absent
    marker.parent.mkdir(parents=True)
    marker.write_text("on\n")
    assert fault_injection_enabled(marker) is False  # present, but data is writable
    assert fault_injection_enabled() is FAULT_MARKER.is_file()  # this host: no test slot


def test_hang_agent_stops_the_agent_with_a_token_only(
    lan: LanDevice, monkeypatch: pytest.MonkeyPatch, agent: subprocess.Popen[bytes]
) -> None:
    for served in serve(lan, monkeypatch, fault_injection=True, agent_pid=lambda: agent.pid):
        token = served.client.token
        served.client.token = None
        with pytest.raises(DeviceRefused) as info:
            served.client.json("POST", HANG_AGENT)
        assert info.value.status == 401 and _state(agent.pid) != "T"
        served.client.token = token
        reply = served.client.json("POST", HANG_AGENT)
        assert reply == {"stopped": agent.pid, "fault": "hang-agent"}
        # stopped (once the signal is delivered): alive and silent, as a hung agent
        assert wait_for(lambda: _state(agent.pid) == "T", 10)
        os.kill(agent.pid, signal.SIGCONT)
        injected = [e for e in lan.events if e["kind"] == "api-fault-injected"]
        assert injected and injected[-1]["pid"] == agent.pid


def test_no_agent_running_is_503(lan: LanDevice, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.api.faults import agent_main_pid

    def none_running() -> int:
        return agent_main_pid(f"edgekiln-no-such-unit-{os.getpid()}.service")

    for served in serve(lan, monkeypatch, fault_injection=True, agent_pid=none_running):
        with pytest.raises(DeviceRefused) as info:
            served.client.json("POST", HANG_AGENT)
        assert info.value.status == 503


def test_agent_exited_records_a_watchdog_kill_and_not_a_clean_stop(lan: LanDevice) -> None:
    assert exit_event({"SERVICE_RESULT": "success", "EXIT_CODE": "exited"}) is None
    env = {
        **lan.env(),
        "SERVICE_RESULT": "watchdog",
        "EXIT_CODE": "dumped",
        "EXIT_STATUS": "ABRT",
    }
    result = CliRunner().invoke(appliance_cli, ["agent-exited"], env=env)
    assert result.exit_code == 0, result.output
    clean = {**lan.env(), "SERVICE_RESULT": "success", "EXIT_CODE": "exited"}
    assert CliRunner().invoke(appliance_cli, ["agent-exited"], env=clean).exit_code == 0
    exits = [e for e in lan.events if e["kind"] == "agent_exited"]
    assert len(exits) == 1
    assert exits[0]["result"] == "watchdog" and exits[0]["exit_status"] == "ABRT"
    assert exits[0]["alert"] is True


def test_kiln_status_events_shows_the_last_events(
    lan: LanDevice, monkeypatch: pytest.MonkeyPatch, xdg: Path
) -> None:
    for served in serve(lan, monkeypatch):
        where = f"127.0.0.1:{served.server.server_address[1]}"
        code = lan.pair_code()
        pair = ["pair", where, "--code", code, "--fingerprint", served.server.fingerprint]
        assert CliRunner().invoke(kiln, pair).exit_code == 0
        events = lan.data / "edgekiln" / "events.jsonl"
        with events.open("a") as handle:
            for i in range(5):
                handle.write(json.dumps({"kind": f"k{i}", "time": 1.7e9 + i, "n": i}) + "\n")
            handle.write(json.dumps({"kind": "agent_exited", "result": "watchdog\x1b[2J"}) + "\n")
        result = CliRunner().invoke(kiln, ["status", where, "--events", "3"])
        assert result.exit_code == 0, result.output
        lines = [x for x in result.output.splitlines() if x.strip().startswith("event")]
        assert len(lines) == 3, result.output
        assert "agent_exited result=watchdog[2J" in lines[-1]  # no escape reaches the terminal
        result = CliRunner().invoke(kiln, ["status", where, "--json", "--events", "2"])
        assert [e["kind"] for e in json.loads(result.output)["events"]][-1] == "agent_exited"
