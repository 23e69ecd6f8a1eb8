"""``appliance agent-exited``: the agent unit's ``ExecStopPost``, an event for an exit that failed.

systemd runs it after every stop of ``edgekiln-agent.service`` with ``$SERVICE_RESULT``,
``$EXIT_CODE`` and ``$EXIT_STATUS`` set (systemd.exec(5)). A result other than ``success`` (a
watchdog timeout, a crash, a start that timed out) is appended to ``events.jsonl`` on data as an
``agent_exited`` alert, so the technician (``kiln status --events``, ``GET /v1/events``) and the
uplink see why the agent was restarted, not only the journal. A clean stop writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import click

from appliance import cli_options

log = logging.getLogger(__name__)


def exit_event(environ: dict[str, str]) -> dict[str, object] | None:
    """The event for systemd's ``SERVICE_RESULT`` etc. in ``environ``; None for a clean stop."""
    result = environ.get("SERVICE_RESULT", "")
    if result in ("", "success"):
        return None
    return {
        "type": "event",
        "kind": "agent_exited",
        "alert": True,
        "result": result,  # e.g. "watchdog", "signal", "exit-code", "core-dump", "timeout"
        "exit_code": environ.get("EXIT_CODE", ""),  # "killed", "dumped", "exited"
        "exit_status": environ.get("EXIT_STATUS", ""),  # "ABRT", "1", ...
        "time": time.time(),
    }


def append_event(path: Path, event: dict[str, object]) -> None:
    """One JSON line, fsynced (as the agent writes its own events)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(event, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@click.command("agent-exited")
@cli_options.data_dir_option("Data partition mount (default: device.json's data_dir, /data).")
def agent_exited(data_dir: Path | None) -> None:
    """Record why the agent stopped (systemd's ExecStopPost; nothing for a clean stop)."""
    from appliance.device import Device

    event = exit_event(dict(os.environ))
    if event is None:
        return
    path = Device.from_env(data_dir).events_path
    try:
        append_event(path, event)
    except OSError as exc:  # never holds up the restart
        log.warning("cannot append to %s: %s", path, exc)
        return
    log.warning(
        "agent exited: %s (%s %s)", event["result"], event["exit_code"], event["exit_status"]
    )
