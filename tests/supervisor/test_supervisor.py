"""The supervisor with real worker processes that beat, hang and crash."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.supervisor.sdnotify import Notifier
from appliance.supervisor.supervisor import Policy, Supervisor, WorkerContext

from .conftest import NotifyListener

WATCHDOG_USEC = 3_000_000  # the watchdog period systemd would enforce
FAST = Policy(
    heartbeat_timeout_s=1.0,
    startup_grace_s=5.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.4,
    max_failures=3,
    stable_s=60.0,
    stop_grace_s=2.0,
    tick_s=0.02,
)


def beat_until_stopped(ctx: WorkerContext, log: Path | None = None) -> None:
    while not ctx.stop.is_set():
        ctx.heartbeat()
        if log is not None:
            with log.open("a") as f:
                f.write(f"{os.getpid()} {time.monotonic()}\n")
        time.sleep(0.02)


def notifier(listener: NotifyListener) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})


def supervise_until(sup: Supervisor, done: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Run the real loop in a thread until ``done()`` (or a generous safety limit)."""
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + limit_s
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join()
    assert done(), sup.events


def kinds(sup: Supervisor) -> list[str]:
    return [str(e["kind"]) for e in sup.events]


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_hung_worker_is_killed_and_replaced_within_the_watchdog_period(
    tmp_path: Path, notify: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="appliance.supervisor.supervisor")
    beats = tmp_path / "beats"
    starts = tmp_path / "starts"

    def hang_first_time(ctx: WorkerContext) -> None:
        with starts.open("a") as f:
            f.write("x")
        if len(starts.read_text()) == 1:
            for _ in range(5):
                ctx.heartbeat()
                with beats.open("a") as f:
                    f.write(f"{os.getpid()} {time.monotonic()}\n")
                time.sleep(0.02)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:  # hung: no heartbeats, deaf to SIGTERM
                time.sleep(1)
        beat_until_stopped(ctx, beats)

    sup = Supervisor(hang_first_time, FAST, notifier=notifier(notify))

    def replaced_and_pinged() -> bool:
        pids = (
            {line.split()[0] for line in beats.read_text().splitlines()} if beats.exists() else ()
        )
        return len(pids) >= 2 and len(notify.times("WATCHDOG=1")) >= 3

    supervise_until(sup, replaced_and_pinged)
    assert kinds(sup).count("worker_started") >= 2
    hung = next(e for e in sup.events if e["kind"] == "worker_hung")
    assert hung["signal"] == "SIGKILL"
    assert pid_gone(int(hung["pid"]))  # type: ignore[call-overload]
    # The agent journals warnings only: the kill and its reason must be among them.
    assert any(r.getMessage().startswith("worker_hung ") for r in caplog.records)
    rows = [line.split() for line in beats.read_text().splitlines()]
    first_pid = rows[0][0]
    last_old = max(float(t) for p, t in rows if p == first_pid)
    first_new = min(float(t) for p, t in rows if p != first_pid)
    assert first_new - last_old < WATCHDOG_USEC / 1e6
    pings = notify.times("WATCHDOG=1")
    assert len(pings) >= 2
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < WATCHDOG_USEC / 1e6  # systemd's watchdog never fired
    assert notify.messages[0][1].startswith("READY=1")
    assert notify.messages[-1][1] == "STOPPING=1"


def crash(ctx: WorkerContext) -> None:
    import faulthandler

    ctx.heartbeat()
    faulthandler.disable()  # pytest's handler would print the crash in every child
    os.kill(os.getpid(), signal.SIGSEGV)


def test_crashing_worker_backs_off_then_switches_to_the_fallback_model(
    notify: NotifyListener,
) -> None:
    def target(ctx: WorkerContext) -> None:
        if ctx.mode == "primary":
            crash(ctx)
        beat_until_stopped(ctx)

    sup = Supervisor(target, FAST, notifier=notifier(notify))
    supervise_until(
        sup,
        lambda: (
            any(e["kind"] == "worker_started" and e["mode"] == "fallback" for e in sup.events)
            and len(notify.times("WATCHDOG=1")) >= 1
        ),
    )
    crashes = [e for e in sup.events if e["kind"] == "worker_crashed"]
    assert [c["signal"] for c in crashes] == ["SIGSEGV"] * 3
    assert [c["restart_in_s"] for c in crashes] == [0.05, 0.1, 0.2]  # exponential backoff
    change = next(e for e in sup.events if e["kind"] == "mode_changed")
    assert (change["previous"], change["mode"], change["alert"]) == ("primary", "fallback", True)
    assert sup.mode == "fallback"


def test_fallback_failing_too_degrades_with_an_alert(notify: NotifyListener) -> None:
    def target(ctx: WorkerContext) -> None:
        if ctx.mode != "degraded":
            crash(ctx) if ctx.mode == "primary" else os._exit(2)
        ctx.emit({"type": "event", "kind": "degraded", "alert": True, "reason": "pass-through"})
        beat_until_stopped(ctx)

    sup = Supervisor(target, FAST, notifier=notifier(notify))
    supervise_until(sup, lambda: any(e["kind"] == "degraded" for e in sup.events))
    changes = [(e["previous"], e["mode"]) for e in sup.events if e["kind"] == "mode_changed"]
    assert changes == [("primary", "fallback"), ("fallback", "degraded")]
    exits = [e["exitcode"] for e in sup.events if e["kind"] == "worker_crashed"]
    assert exits == [-signal.SIGSEGV] * 3 + [2] * 3
    alert = next(e for e in sup.events if e["kind"] == "degraded")
    assert alert["alert"] is True and alert["mode"] == "degraded"


def test_worker_silent_from_the_start_is_killed_after_the_grace(notify: NotifyListener) -> None:
    def silent(ctx: WorkerContext) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)

    policy = Policy(**{**FAST.__dict__, "startup_grace_s": 0.3, "max_failures": 100})
    sup = Supervisor(silent, policy, notifier=notifier(notify))
    supervise_until(sup, lambda: kinds(sup).count("worker_hung") >= 2)
    hung = [e for e in sup.events if e["kind"] == "worker_hung"]
    assert all(e["during"] == "startup" for e in hung)
    assert all(pid_gone(int(e["pid"])) for e in hung)  # type: ignore[call-overload]


def test_stop_terminates_the_worker_cleanly(notify: NotifyListener) -> None:
    sup = Supervisor(beat_until_stopped, FAST, notifier=notifier(notify))
    supervise_until(sup, lambda: len(notify.times("WATCHDOG=1")) >= 1)
    started = next(e for e in sup.events if e["kind"] == "worker_started")
    assert pid_gone(int(started["pid"]))  # type: ignore[call-overload]
    assert "worker_crashed" not in kinds(sup)


def test_notifier_abstract_socket_and_watchdog_pid() -> None:
    import socket

    name = f"edgekiln-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"})
        assert n.ping_interval_s == 0.5
        assert n.ready("up")
        assert sock.recv(100) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()
    other = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.ping_interval_s is None
    assert not other.watchdog()  # no socket: a no-op


def test_a_busy_start_beats_and_a_blocked_one_does_not() -> None:
    """Before its first frame a worker that works (a model compiling: CPU used) beats; one that
    is blocked (no CPU: a model file that never arrives) goes silent, and so does a busy
    worker after its first frame. The CPU share asked for is tiny here, so a loaded test
    host (this thread gets a few % of a core) still counts as busy."""
    import multiprocessing

    from appliance.supervisor.pipeline_worker import OutageBeat

    def spin(cpu_s: float) -> None:
        end, deadline = time.process_time() + cpu_s, time.monotonic() + 60
        while time.process_time() < end and time.monotonic() < deadline:
            pass

    ctx_mp = multiprocessing.get_context("fork")
    hb = ctx_mp.RawValue("d", 0.0)
    reader, writer = ctx_mp.Pipe(duplex=False)
    ctx = WorkerContext("primary", hb, writer, threading.Event())
    beat = OutageBeat(ctx, every_s=0.2, busy_fraction=0.01)
    try:
        time.sleep(0.6)
        assert hb.value == 0.0  # blocked before the first frame: silence
        spin(0.5)
        assert hb.value > 0.0  # busy before the first frame: not a hang
        beat.frame()
        first = hb.value
        spin(0.5)
        time.sleep(0.3)  # a tick after the spin
        assert hb.value == first  # after the first frame only frames and events beat
    finally:
        ctx.stop.set()
        reader.close()
        writer.close()


def test_a_worker_blocked_opening_its_model_is_still_killed(tmp_path: Path) -> None:
    """The real pipeline worker whose model file is a named pipe nobody writes (its load blocks
    in ``open()``, as the e2e lifecycle's hung-worker scenario): the start-up beat needs CPU
    use, so the blocked worker goes silent and is killed after the heartbeat timeout."""
    import json

    from appliance.supervisor.pipeline_worker import pipeline_target
    from tests.inference.fixtures import make_package

    package = make_package(tmp_path / "pkg")
    (package / "model.onnx").unlink()
    os.mkfifo(package / "model.onnx")
    config = tmp_path / "pipeline.json"
    pipeline = {
        "model": str(package),
        "source": f"npz:{package}/reference.npz?loop=1&fps=5",
        "sink": str(tmp_path / "results.jsonl"),
        "backends": ["onnxruntime"],
    }
    config.write_text(json.dumps(pipeline))
    policy = Policy(heartbeat_timeout_s=3.0, backoff_initial_s=0.2, tick_s=0.05)
    sup = Supervisor(pipeline_target(config), policy, modes=("primary",))
    supervise_until(sup, lambda: "worker_hung" in kinds(sup), limit_s=90.0)
    hung = next(e for e in sup.events if e["kind"] == "worker_hung")
    # killed for silence after its first beat, long before the start-up beat's 120 s could end
    assert hung.get("during") != "startup" and float(hung["silent_s"]) >= 3.0, hung


def test_camera_outage_beats_until_the_camera_is_back() -> None:
    """OutageBeat in a real worker context: beats between source_lost and source_reopened."""
    import multiprocessing

    from appliance.supervisor.pipeline_worker import OutageBeat, policy_for

    ctx_mp = multiprocessing.get_context("fork")
    hb = ctx_mp.RawValue("d", 0.0)
    reader, writer = ctx_mp.Pipe(duplex=False)
    ctx = WorkerContext("primary", hb, writer, threading.Event())
    beat = OutageBeat(ctx, every_s=0.05)
    try:
        beat.frame()
        first = hb.value
        time.sleep(0.3)
        assert hb.value == first  # no frames, no outage: silence (a hang would be caught)
        beat.event("source_lost")
        lost = hb.value
        time.sleep(0.3)
        assert hb.value > lost  # waiting for the camera is not a hang
        beat.event("source_reopened")
        reopened = hb.value
        time.sleep(0.3)
        assert hb.value == reopened
    finally:
        ctx.stop.set()
        reader.close()
        writer.close()
    assert policy_for(30.0).heartbeat_timeout_s == 15.0
    assert policy_for(10.0).heartbeat_timeout_s == 5.0
    assert policy_for(None).heartbeat_timeout_s == Policy.heartbeat_timeout_s
