"""Fault injection for the QEMU test profile: a hung agent, on images built to allow it only.

The end-to-end suite needs a way to make the *agent* (the supervisor, not its worker) stop
pinging systemd's watchdog, so that ``WatchdogSec`` kills and restarts it
(docs/decisions.md §4). No production image may have such a way in: it would let anyone paired
on the LAN stop a device's inference without a signed bundle. So the route exists only where
the image itself says so:

- the builder writes :data:`FAULT_MARKER` into the slot only for a recipe with
  ``[lan] fault_injection = true`` (the QEMU test profile, ``tests/e2e/device.py``); the slot is
  signed, verified before it is written and mounted read-only;
- :func:`fault_injection_enabled` accepts the marker only on a read-only file system, so a file
  of that name on data (or any writable mount) never turns it on;
- without it the server has no such route at all (404, as for any unknown path, before the
  token is even looked at); with it the route still needs a paired token.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from appliance.api.errors import ApiError

log = logging.getLogger(__name__)

#: written into the read-only slot by the builder for ``[lan] fault_injection = true`` only
FAULT_MARKER = Path("/etc/edgekiln/fault-injection")
AGENT_UNIT = "edgekiln-agent.service"


class FaultUnavailable(ApiError):
    """The fault cannot be injected here (no agent running under systemd)."""


def fault_injection_enabled(marker: Path = FAULT_MARKER) -> bool:
    """True only if ``marker`` is a regular file on a read-only file system (the slot)."""
    try:
        if not marker.is_file():
            return False
        read_only = bool(os.statvfs(marker).f_flag & os.ST_RDONLY)
    except OSError:
        return False
    if not read_only:
        log.warning("%s is on a writable file system: fault injection stays off", marker)
    return read_only


def agent_main_pid(unit: str = AGENT_UNIT) -> int:
    """The MainPID systemd tracks for ``unit``; :class:`FaultUnavailable` if none runs."""
    try:
        proc = subprocess.run(
            ["systemctl", "show", "--property=MainPID", "--value", unit],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FaultUnavailable(f"cannot ask systemd for {unit}'s main process: {exc}") from None
    pid = proc.stdout.strip()
    if proc.returncode != 0 or not pid.isdigit() or int(pid) <= 1:
        raise FaultUnavailable(
            f"{unit} has no main process (systemctl: {pid or proc.stderr.strip()!r}): "
            "is the agent running?"
        )
    return int(pid)


def hang_agent(pid: int) -> None:
    """Stop process ``pid`` (SIGSTOP): it stays alive and silent, as a hung agent would.

    systemd's watchdog then sends its WatchdogSignal followed by SIGCONT, so the stopped agent
    really dies and ``Restart=always`` starts it again.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
    except OSError as exc:
        raise FaultUnavailable(f"cannot stop the agent (pid {pid}): {exc.strerror}") from None
    log.warning("LAN API fault injection: agent pid %d stopped (SIGSTOP)", pid)
