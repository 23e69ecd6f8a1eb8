"""The systemd unit of the agent (the builder installs it; systemd owns /dev/watchdog).

The image also sets ``RuntimeWatchdogSec`` in /etc/systemd/system.conf (a hardware watchdog
for systemd itself); the agent never opens /dev/watchdog (ARCHITECTURE Decision 4).
"""

from __future__ import annotations

AGENT_UNIT_NAME = "edgekiln-agent.service"


def render_agent_unit(
    *,
    exec_start: str = "/opt/edgekiln/appliance/appliance agent",
    watchdog_s: int = 60,
    start_timeout_s: int = 900,
) -> str:
    """``edgekiln-agent.service``: Type=notify, WatchdogSec, restarts, reboot when it keeps failing.

    ``watchdog_s`` must exceed the supervisor's heartbeat timeout plus a tick (the agent pings
    at half of it). ``start_timeout_s`` covers the health gate on a tried slot. If the agent
    cannot stay up, systemd reboots: on a tried slot that returns to the committed one.
    """
    return f"""\
[Unit]
Description=edgekiln appliance agent (inference supervisor, health gate)
After=local-fs.target network.target
StartLimitIntervalSec=900
StartLimitBurst=5
StartLimitAction=reboot

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
WatchdogSec={int(watchdog_s)}
TimeoutStartSec={int(start_timeout_s)}
Restart=always
RestartSec=5
KillMode=mixed

[Install]
WantedBy=multi-user.target
"""
