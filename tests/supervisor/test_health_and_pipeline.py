"""The health gate with a real self-test, and the real inference pipeline as a supervised worker."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.slots.filestore import file_loader
from appliance.slots.state import BootState
from appliance.state import SlotRecord, load_state, record_installed
from appliance.supervisor.health import HealthReport, health_gate, run_health_check
from appliance.supervisor.pipeline_worker import pipeline_target
from appliance.supervisor.supervisor import Policy, Supervisor

pytest.importorskip("onnxruntime")
from tests.inference.fixtures import make_package

from .conftest import NotifyListener


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture(scope="module")
def wrong_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_package(tmp_path_factory.mktemp("pkg") / "wrong")
    ref = np.load(root / "reference.npz")
    np.savez_compressed(
        root / "reference.npz", images=ref["images"], labels=(ref["labels"] + 1) % 4
    )
    return root


def trial(tmp_path: Path) -> tuple[Path, Path]:
    """Slot B installed and tried by the loader (tries used up), the device now runs B."""
    state_file = tmp_path / "slots.env"
    loader = file_loader(state_file)
    loader.deactivate("B")
    loader.begin_try("B")
    loader.write(BootState("A", "B", 0))
    data = tmp_path / "data"
    record_installed(data, SlotRecord("B", "2.0.0", 7))
    return state_file, data


@pytest.mark.integration
def test_gate_commits_a_healthy_slot(tmp_path: Path, package: Path) -> None:
    state_file, data = trial(tmp_path)
    loader = file_loader(state_file)
    reboots: list[int] = []
    outcome = health_gate(
        loader, "B", data, lambda: run_health_check(package, limit=4), lambda: reboots.append(1)
    )
    assert outcome == "passed"
    assert loader.read() == BootState("B")
    assert load_state(data).security_floor == 7
    assert reboots == []
    # Next boot: nothing on trial any more.
    assert (
        health_gate(loader, "B", data, lambda: HealthReport(False, ["x"], {}), lambda: None)
        == "committed"
    )


@pytest.mark.integration
def test_gate_rolls_back_a_wrong_model_without_raising_the_floor(
    tmp_path: Path, wrong_package: Path
) -> None:
    state_file, data = trial(tmp_path)
    loader = file_loader(state_file)
    reboots: list[int] = []
    report_box: list[HealthReport] = []

    def check() -> HealthReport:
        report_box.append(run_health_check(wrong_package, limit=8))
        return report_box[0]

    assert health_gate(loader, "B", data, check, lambda: reboots.append(1)) == "failed"
    assert reboots == [1]
    assert any("top-1" in r for r in report_box[0].reasons)
    assert loader.read() == BootState("A", None, 0, frozenset({"B"}))
    state = load_state(data)
    assert state.security_floor == 0 and state.installed is None


def test_health_check_reports_dead_services_and_broken_packages(tmp_path: Path) -> None:
    report = run_health_check(
        tmp_path / "missing-package",
        services=["camera.service", "edgekiln-api.service"],
        service_check=lambda units: {u: u != "camera.service" for u in units},
    )
    assert not report.passed
    assert report.reasons[0] == "service camera.service is not active"
    assert report.reasons[1].startswith("self-test: ")


def test_failed_try_found_after_boot_is_marked_bad(tmp_path: Path) -> None:
    state_file, data = trial(tmp_path)
    loader = file_loader(state_file)
    # The tried slot hung; the watchdog reset the device and the loader chose A again.
    assert (
        health_gate(loader, "A", data, lambda: HealthReport(True, [], {}), lambda: None)
        == "committed"
    )
    assert loader.read() == BootState("A", None, 0, frozenset({"B"}))
    assert load_state(data).installed is None


def _images(folder: Path, count: int) -> None:
    import cv2

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (16, 16, 3), np.uint8))


def _supervise_until_the_source_ends(config: Path, mode: str) -> Supervisor:
    """Run the real pipeline worker in ``mode`` until it exits; it must exit cleanly."""
    policy = Policy(heartbeat_timeout_s=20, backoff_initial_s=5, tick_s=0.05)
    sup = Supervisor(pipeline_target(config), policy, modes=(mode,))
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 60
    while not any(e["kind"] == "worker_exited" for e in sup.events) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    exited = next(e for e in sup.events if e["kind"] == "worker_exited")  # the source ran out
    assert exited["exitcode"] == 0
    return sup


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["primary", "fallback", "degraded"])
def test_real_pipeline_runs_as_a_supervised_worker(
    tmp_path: Path, package: Path, mode: str
) -> None:
    _images(tmp_path / "frames", 6)
    sink = tmp_path / "results.jsonl"
    config = tmp_path / "pipeline.json"
    config.write_text(
        json.dumps(
            {
                # In fallback mode the worker must not even try the (missing) primary model.
                "model": str(tmp_path / "no-primary") if mode == "fallback" else str(package),
                "fallback_model": str(package),
                "source": str(tmp_path / "frames"),
                "sink": str(sink),
                "backends": ["onnxruntime"],
            }
        )
    )
    sup = _supervise_until_the_source_ends(config, mode)
    records = [json.loads(line) for line in sink.read_text().splitlines()]
    frames = [r for r in records if r.get("type") != "event"]
    assert len(frames) == 6
    if mode == "degraded":
        assert all(r["degraded"] for r in frames)
        assert any(e.get("kind") == "degraded" and e.get("alert") for e in sup.events)
    else:
        assert any(e.get("kind") == "loaded" for e in sup.events)  # forwarded pipeline event
        assert not any(e.get("kind") == "fallback" for e in sup.events)


@pytest.mark.integration
def test_appliance_agent_commits_then_supervises_under_a_notify_socket(
    tmp_path: Path, package: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    state_file, data = trial(tmp_path)
    _images(tmp_path / "frames", 3)
    config = tmp_path / "pipeline.json"
    config.write_text(
        json.dumps(
            {"model": str(package), "source": str(tmp_path / "frames"), "backends": ["onnxruntime"]}
        )
    )
    listener = NotifyListener(tmp_path / "n.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "2000000"}
    agent = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "appliance"),
            "agent",
            f"--config={config}",
            f"--loader=file:{state_file}",
            "--booted=B",
            f"--data-dir={data}",
            "--health-limit=4",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not listener.times("WATCHDOG=1") and time.monotonic() < deadline:
            time.sleep(0.05)
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
        listener.close()
    assert agent.returncode == 0, err
    assert "health gate: slot B passed" in err
    assert file_loader(state_file).read() == BootState("B")
    sent = [m for _, m in listener.messages]
    assert sent[0].startswith("READY=1") and "WATCHDOG=1" in sent and sent[-1] == "STOPPING=1"
    events = (data / "edgekiln" / "events.jsonl").read_text()
    assert '"worker_started"' in events


def test_a_check_that_cannot_run_fails_the_slot(tmp_path: Path) -> None:
    state_file, data = trial(tmp_path)
    loader = file_loader(state_file)

    def broken() -> HealthReport:
        raise FileNotFoundError("systemctl")

    reboots: list[int] = []
    assert health_gate(loader, "B", data, broken, lambda: reboots.append(1)) == "failed"
    assert reboots == [1]
    assert loader.read().status("B") == "bad"


@pytest.mark.integration
def test_degraded_mode_keeps_the_file_sink_when_the_uplink_cannot_start(tmp_path: Path) -> None:
    """The last mode must not crash-loop on its MQTT uplink: it falls back to the file sink."""
    _images(tmp_path / "frames", 4)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the MQTT buffer folder should be")
    sink = tmp_path / "results.jsonl"
    config = tmp_path / "pipeline.json"
    config.write_text(
        json.dumps(
            {
                "model": str(tmp_path / "no-model"),
                "source": str(tmp_path / "frames"),
                "sink": str(sink),
                "backends": ["onnxruntime"],
                "mqtt": {"host": "127.0.0.1", "port": 1, "buffer_dir": str(blocker / "buf")},
            }
        )
    )
    sup = _supervise_until_the_source_ends(config, "degraded")
    frames = [json.loads(line) for line in sink.read_text().splitlines()]
    assert len([r for r in frames if r.get("degraded")]) == 4
    unavailable = [e for e in sup.events if e.get("kind") == "sink_unavailable"]
    assert unavailable and unavailable[0]["alert"] and "buf" in unavailable[0]["reason"]


@pytest.mark.integration
def test_agent_says_the_gate_failed_before_it_asks_for_the_reboot(tmp_path: Path) -> None:
    """The console line must come before `systemctl reboot` (after it the console may be gone)."""
    import os
    import subprocess
    import sys

    state_file, data = trial(tmp_path)
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    config = tmp_path / "pipeline.json"
    config.write_text(json.dumps({"model": str(broken), "source": "npz:none"}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    # The only fake: systemctl, so the test machine is not rebooted.
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "appliance"),
            "agent",
            f"--config={config}",
            f"--loader=file:{state_file}",
            "--booted=B",
            f"--data-dir={data}",
            "--service=none",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "health gate: slot B failed; rebooting into the committed slot" in proc.stderr
    assert calls.read_text().splitlines()[-1] == "reboot"
    assert file_loader(state_file).read().status("B") == "bad"
