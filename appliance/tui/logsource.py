"""The agent's recent log lines: the journal when there is one, else the log file on data."""

from __future__ import annotations

import shutil
import subprocess
from collections import deque

from appliance.device import AGENT_UNIT, Device

MAX_LINES = 500


def recent_lines(device: Device, limit: int = MAX_LINES) -> tuple[str, list[str]]:
    """(where the lines came from, the last ``limit`` lines)."""
    journalctl = shutil.which("journalctl")
    if journalctl and not device.demo:
        proc = subprocess.run(
            [journalctl, "-u", AGENT_UNIT, "-n", str(limit), "-o", "short-iso", "--no-pager"],
            check=False,
            capture_output=True,
            text=True,
        )
        lines = proc.stdout.splitlines()
        if proc.returncode == 0 and lines and "No entries" not in lines[0]:
            return f"journal ({AGENT_UNIT})", lines
    path = device.log_dir / "edgekiln-agent.log"
    try:
        with path.open(errors="replace") as handle:
            return str(path.name), [line.rstrip("\n") for line in deque(handle, maxlen=limit)]
    except OSError:
        pass
    events = device.events_path
    try:
        with events.open(errors="replace") as handle:
            return events.name, [line.rstrip("\n") for line in deque(handle, maxlen=limit)]
    except OSError:
        return "no log", ["no journal entries and no log file on data"]


def filter_lines(lines: list[str], text: str) -> list[str]:
    """Lines containing every word of ``text`` (case-insensitive)."""
    words = text.lower().split()
    return [line for line in lines if all(w in line.lower() for w in words)]
