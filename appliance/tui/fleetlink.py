"""The fleet link a technician may change on site: the device's site and its broker host.

Both are kept on data, never in the slot (docs/decisions.md §18): the site in
``edgekiln/site`` (what telemetry topics, rollout buckets and LAN discovery read), the broker
host in the device's own telemetry layer ``edgekiln/telemetry-device.json``
(appliance/telemetry/settings.py), so an update keeps them. Applied by restarting the agent:
its telemetry sink reads both when it starts; no reflash.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from dataclasses import dataclass

from appliance.device import AGENT_UNIT, Device
from appliance.fsutil import atomic_write_bytes

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class FleetLink:
    """What the form shows and writes."""

    site: str
    broker_host: str
    broker_from: str  # where the host in force comes from (for the technician)


def read_link(device: Device) -> FleetLink:
    """The site on data and the broker host in force (device layer, else the slot's recipe)."""
    from appliance.errors import ApplianceError
    from appliance.telemetry import settings

    site_path = device.state_dir / "site"
    site = site_path.read_text().strip() if site_path.is_file() else ""
    try:
        layer = settings.read_layer(device.data_dir / settings.DEVICE_FILE) or {}
        own = str((layer.get("mqtt") or {}).get("host", ""))
        if own:
            return FleetLink(site, own, "set on this device")
        slot = settings.read_layer(settings.slot_file()) or {}
        recipe = str((slot.get("mqtt") or {}).get("host", ""))
    except ApplianceError as exc:
        return FleetLink(site, "", f"unreadable: {exc}")
    return FleetLink(site, recipe, "from the image's recipe" if recipe else "no broker set")


def validate(site: str, host: str) -> dict[str, str]:
    """Problems per field (``site``, ``broker``); empty when both may be written."""
    errors = {}
    if not _NAME.match(site):
        errors["site"] = "1-63 letters, digits, '.', '_' or '-' (it becomes part of MQTT topics)"
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            labels = host.rstrip(".").split(".")
            if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
                errors["broker"] = "a host name (e.g. fleet.plant.lan) or an IP address"
    return errors


def write_link(device: Device, site: str, host: str) -> None:
    """Write both on data (atomically); an empty host goes back to the recipe's broker."""
    from appliance.telemetry import settings

    device.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(device.state_dir / "site", site.encode() + b"\n")
    settings.update_device_layer(device.data_dir, mqtt={"host": host or None})


def restart_agent(demo: bool = False) -> str:
    """``systemctl restart`` of the agent, so telemetry uses the new site and broker now."""
    if demo:
        return f"demo device: a real device would restart {AGENT_UNIT} now"
    exe = shutil.which("systemctl")
    if exe is None:
        return f"systemctl not found: saved; restart {AGENT_UNIT} by hand to apply"
    proc = subprocess.run([exe, "restart", AGENT_UNIT], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"restarting {AGENT_UNIT} failed: {proc.stderr.strip() or proc.returncode}"
    return f"applied (restarted {AGENT_UNIT})"
