"""Who is speaking: device id, site, target, running slot and version (docs/decisions.md §18).

The device id is made once and kept on data (``edgekiln/device-id``); provisioning at flash
time may write it first. The site comes from ``edgekiln/site`` (set by provisioning or in the
TUI), ``unassigned`` until then. Every telemetry message carries all three.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from appliance.fsutil import atomic_write_bytes
from appliance.slots.booted import booted_slot
from appliance.slots.errors import BootedSlotUnknown
from appliance.telemetry.config import TelemetryConfig

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Identity:
    device: str
    site: str
    target: str
    version: str
    slot: str

    def topic(self, prefix: str) -> str:
        """``<prefix>/<site>/<device>``: the root of this device's topics."""
        return f"{prefix}/{self.site}/{self.device}"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def device_id(data_dir: Path) -> str:
    """The id on data; made (and written power-cut-safely) the first time it is asked for."""
    path = data_dir / "edgekiln" / "device-id"
    found = _read(path)
    if found:
        return _SAFE.sub("-", found)
    made = f"dev-{uuid.uuid4().hex[:12]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, made.encode() + b"\n")
    return made


def running_slot(cmdline: Path = Path("/proc/cmdline")) -> str:
    """``a`` / ``b``: the loader's ``edgekiln.slot=`` (appliance/slots/booted.py), else ``unknown``.

    Not the ``root=`` word: the loaders name the root by its PARTUUID (docs/decisions.md §2).
    """
    try:
        return booted_slot(_read(cmdline)).lower()
    except BootedSlotUnknown:
        return "unknown"


def resolve(cfg: TelemetryConfig) -> Identity:
    """The identity from the config, filled in from data and device.json where left empty."""
    data = Path(cfg.data_dir)
    try:
        device_doc = json.loads(Path(cfg.device_config).read_text())
    except (OSError, ValueError):
        device_doc = {}
    site = cfg.site or _SAFE.sub("-", _read(data / "edgekiln" / "site")) or "unassigned"
    return Identity(
        device=cfg.device_id or device_id(data),
        site=site,
        target=cfg.target or str(device_doc.get("target", "unknown")),
        version=str(device_doc.get("version", "unknown")),
        slot=running_slot(),
    )
