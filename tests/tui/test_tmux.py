"""``appliance tui --demo`` in a real terminal (tmux, 80x24): it paints, saves a network setting
and switches tasks with a digit right after, installs nothing, rolls back, quits; and the
technician's walk install -> cancel pending update -> roll back, checked on screen and on disk.

Runs the source install; with ``EDGEKILN_FROZEN_APPLIANCE=/path/to/appliance`` (the frozen
onedir executable, e.g. from ``kiln freeze``) the same checks run on the frozen runtime too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

RUNTIMES = [pytest.param(Path(sys.executable).with_name("appliance"), id="source")]
if os.environ.get("EDGEKILN_FROZEN_APPLIANCE"):
    RUNTIMES.append(pytest.param(Path(os.environ["EDGEKILN_FROZEN_APPLIANCE"]), id="frozen"))


def tmux(*args: str) -> str:
    proc = subprocess.run(["tmux", *args], check=True, capture_output=True, text=True, timeout=20)
    return proc.stdout


def wait_screen(session: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")


def session_alive(session: str) -> bool:
    proc = subprocess.run(["tmux", "has-session", "-t", session], check=False, capture_output=True)
    return proc.returncode == 0


TERMINALS = [
    pytest.param("TERM=xterm-256color", id="colour"),
    pytest.param("TERM=vt220 NO_COLOR=1", id="serial-monochrome"),
]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize("appliance", RUNTIMES)
def test_demo_starts_switches_and_quits_under_tmux(
    appliance: Path, terminal: str, model_dir: Path, tmp_path: Path
) -> None:
    session = f"edgekiln-tui-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    # The shell records the exit status, then the session ends.
    command = (
        f"EDGEKILN_DEMO_MODEL={model_dir} {terminal} {appliance} tui --demo "
        f"--demo-dir {tmp_path / 'demo'}; echo $? > {done}"
    )
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", session, command)
    try:
        screen = wait_screen(session, "running A, committed A")
        assert "[1 Status]" in screen and "demo-0001" in screen
        # Network: the interface list has focus on open; static address, Enter saves, y
        # confirms; then a digit switches tasks (it does not type into the last field)
        tmux("send-keys", "-t", session, "2")
        wait_screen(session, "[2 Network]")
        tmux("send-keys", "-t", session, "Tab", "Enter")  # open the mode list
        wait_screen(session, "Static IPv4")
        tmux("send-keys", "-t", session, "Down")
        time.sleep(0.5)  # a person's pace: the list takes its keys once it is drawn
        tmux("send-keys", "-t", session, "Enter")
        wait_screen(session, "Mode      Static IPv4")
        tmux("send-keys", "-t", session, "Tab")
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "-l", "192.168.7.20/24")
        wait_screen(session, "192.168.7.1")  # gateway and DNS proposed
        tmux("send-keys", "-t", session, "Enter")
        wait_screen(session, "apply it?")
        tmux("send-keys", "-t", session, "y")
        wait_screen(session, "saved 10-edgekiln-eth0.network")
        tmux("send-keys", "-t", session, "3")
        screen = wait_screen(session, "[3 Camera]")
        network = tmp_path / "demo" / "data" / "etc" / "systemd" / "network"
        assert "Gateway=192.168.7.1\n" in (network / "10-edgekiln-eth0.network").read_text()
        tmux("send-keys", "-t", session, "7")
        wait_screen(session, "network.apply iface=eth0")  # the technician's own actions
        tmux("send-keys", "-t", session, "5")
        screen = wait_screen(session, "edgekiln-demo-1.1.0.bundle")
        assert "[5 Update]" in screen
        tmux("send-keys", "-t", session, "6", "r", "y")  # an action: logged, not drawn over
        screen = wait_screen(session, "next boot: slot B")
        assert "WARNING" not in screen and "technician action" not in screen
        quit_and_wait(session, done)
        log = (tmp_path / "demo" / "data" / "log" / "edgekiln-tui.log").read_text()
        assert "technician action: slots.rollback" in log
    finally:
        if session_alive(session):
            tmux("kill-session", "-t", session)


def flat(screen: str) -> str:
    """The screen's words on one line: a message wrapped at 80 columns reads as one sentence."""
    return " ".join(screen.split())


def quit_and_wait(session: str, done: Path) -> None:
    """``q`` ends the app; the shell records its exit status and the session ends."""
    tmux("send-keys", "-t", session, "q")
    deadline = time.monotonic() + 20
    while session_alive(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session_alive(session)
    assert done.read_text().strip() == "0"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("terminal", TERMINALS)
@pytest.mark.parametrize("appliance", RUNTIMES)
def test_install_cancel_pending_then_roll_back_under_tmux(
    appliance: Path, terminal: str, model_dir: Path, tmp_path: Path
) -> None:
    """Install 1.1.0 from the demo's USB stick, cancel it on the Slots screen, then roll back:
    slot B is bad, so there is nothing to go back to and nothing changes (issue #18 item 7)."""
    from appliance.slots.config import open_loader
    from appliance.slots.state import BootState
    from appliance.state import load_state
    from appliance.tui.demo import NEW_VERSION, _slot_image

    session = f"edgekiln-tui-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    demo = tmp_path / "demo"
    command = (
        f"EDGEKILN_DEMO_MODEL={model_dir} {terminal} {appliance} tui --demo "
        f"--demo-dir {demo}; echo $? > {done}"
    )
    loader = open_loader(f"grub:{demo / 'boot' / 'efi'}")
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", session, command)
    try:
        wait_screen(session, "running A, committed A")
        assert loader.read() == BootState("A")
        # Update: the list has focus; the signed 1.1.0 bundle is the fourth; Enter verifies it
        tmux("send-keys", "-t", session, "5")
        wait_screen(session, "edgekiln-demo-1.1.0.bundle")
        tmux("send-keys", "-t", session, "Down", "Down", "Down", "Enter")
        screen = wait_screen(session, "VERIFIED edgekiln-demo-1.1.0.bundle")
        assert "press i to install" in flat(screen)
        tmux("send-keys", "-t", session, "i")
        wait_screen(session, "Install edgekiln-demo-1.1.0.bundle into slot B?")
        tmux("send-keys", "-t", session, "y")
        wait_screen(session, f"installed {NEW_VERSION} into slot B")
        assert loader.read() == BootState("A", "B", 1)  # on disk: B is tried at the next boot
        # Slots: B is tried at the next boot
        tmux("send-keys", "-t", session, "6")
        screen = wait_screen(session, "update pending: slot B is tried at the next boot")
        rows = [line.split() for line in screen.splitlines()]
        assert ["A", "committed", "1.0.0", "(security", "1)", "running"] in rows
        assert ["B", "tried", NEW_VERSION, "(security", "2)", "next", "boot"] in rows
        # Cancel pending update: asked first, then B is bad and A stays the next boot
        tmux("send-keys", "-t", session, "c")
        screen = wait_screen(session, "Cancel the pending update in slot B?")
        assert "Yes (y)" in screen and "slot A (running, committed) stays the next" in flat(screen)
        tmux("send-keys", "-t", session, "y")
        screen = wait_screen(session, "pending update cancelled")
        assert "update pending" not in screen
        rows = [line.split() for line in screen.splitlines()]
        assert ["A", "committed", "1.0.0", "(security", "1)", "running,", "next", "boot"] in rows
        assert any(row[:2] == ["B", "bad"] and "next" not in row for row in rows)
        # Roll back: already on the last committed slot and B is bad: refused, no question
        tmux("send-keys", "-t", session, "r")
        screen = wait_screen(session, "roll back refused")
        assert "roll back refused: slot B is marked bad; there is nothing to roll back to" in flat(
            screen
        )
        assert "Yes (y)" not in screen  # refused before any question
        assert ["B", "bad", NEW_VERSION, "(security", "2)"] in [
            ln.split() for ln in screen.splitlines()
        ]
        quit_and_wait(session, done)
    finally:
        if session_alive(session):
            tmux("kill-session", "-t", session)
    # On disk: B holds 1.1.0 (the install happened), the loader no longer tries it, the state
    # forgot the install, and only the confirmed actions were logged (the refusal changed nothing)
    assert (demo / "slots" / "rootfs_b.img").read_bytes() == _slot_image(NEW_VERSION)
    assert loader.read() == BootState("A", None, 0, frozenset({"B"}))
    assert load_state(demo / "data").installed is None
    actions = demo / "data" / "edgekiln" / "actions.jsonl"
    logged = [json.loads(line)["action"] for line in actions.read_text().splitlines()]
    assert logged == ["update.install", "update.installed", "slots.cancel_pending"]
