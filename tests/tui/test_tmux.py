"""``appliance tui --demo`` in a real terminal (tmux, 80x24): it paints, saves a network setting
and switches tasks with a digit right after, installs nothing, rolls back, quits.

Runs the source install; with ``EDGEKILN_FROZEN_APPLIANCE=/path/to/appliance`` (the frozen
onedir executable, e.g. from ``kiln freeze``) the same checks run on the frozen runtime too.
"""

from __future__ import annotations

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


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize(
    "terminal",
    [
        pytest.param("TERM=xterm-256color", id="colour"),
        pytest.param("TERM=vt220 NO_COLOR=1", id="serial-monochrome"),
    ],
)
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
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while session_alive(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not session_alive(session)
        assert done.read_text().strip() == "0"
        log = (tmp_path / "demo" / "data" / "log" / "edgekiln-tui.log").read_text()
        assert "technician action: slots.rollback" in log
    finally:
        if session_alive(session):
            tmux("kill-session", "-t", session)
