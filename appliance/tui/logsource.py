"""The agent's recent log lines: the journal when there is one, else the log file on data."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
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


def action_lines(device: Device, limit: int = MAX_LINES) -> list[str]:
    """The technician's recorded actions (``actions.jsonl``), one readable line each."""
    try:
        with device.actions_path.open(errors="replace") as handle:
            raw = list(deque(handle, maxlen=limit))
    except OSError:
        return []
    out = []
    for line in raw:
        try:
            record = json.loads(line)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(record.pop("ts"))))
            action = str(record.pop("action"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # a line torn by a power cut
        details = " ".join(f"{k}={v}" for k, v in sorted(record.items()))
        out.append(f"{when} {action} {details}".rstrip())
    return out


def filter_lines(lines: list[str], text: str) -> list[str]:
    """Lines containing every word of ``text`` (case-insensitive)."""
    words = text.lower().split()
    return [line for line in lines if all(w in line.lower() for w in words)]
