"""Where this device keeps things: one small facade over paths, config and the slot/bundle APIs.

The technician TUI (and anything else that acts on the whole device) needs the same handful of
facts: the data partition, ``/etc/edgekiln/device.json``, the slot loader and the booted slot,
the keyring and the policy a bundle must pass. :meth:`Device.from_env` reads them the way the
other commands do (``$EDGEKILN_DATA``, ``$EDGEKILN_SLOTS``, ``$EDGEKILN_BOOTED_SLOT``,
``$EDGEKILN_DEVICE_CONFIG``); the TUI's demo builds one over a temp directory instead.

Every change a technician makes goes through :meth:`Device.log_action`, a JSON-lines file on
data (``edgekiln/actions.jsonl``), appended and fsynced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from appliance.bootdisk import SLOT_DEVICES
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.bundle import Policy
    from appliance.slots.loader import Loader
    from appliance.slots.state import Slot

log = logging.getLogger(__name__)

DEVICE_CONFIG = Path("/etc/edgekiln/device.json")
DEFAULT_DATA = Path("/data")
AGENT_UNIT = "edgekiln-agent.service"
USB_GLOBS = ("/run/edgekiln/usb/*", "/media/*", "/media/*/*", "/run/media/*/*", "/mnt", "/mnt/*")


class DeviceConfigError(ApplianceError):
    """/etc/edgekiln/device.json is unreadable or malformed."""


class DeviceConfig(msgspec.Struct, frozen=True):
    """The fields of ``device.json`` this runtime reads (unknown ones are ignored)."""

    product: str = "unknown"
    version: str = "unknown"
    target: str = "unknown"
    security_version: int = 0
    backend: str | None = None
    models: dict[str, str] = msgspec.field(default_factory=dict)
    data_dir: str = str(DEFAULT_DATA)
    health: dict[str, float] = msgspec.field(default_factory=dict)


def load_device_config(path: Path) -> DeviceConfig:
    """Read ``device.json``; a missing file gives defaults (a development machine)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return DeviceConfig()
    except OSError as exc:
        raise DeviceConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return msgspec.json.decode(data, type=DeviceConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DeviceConfigError(f"{path}: {exc}; the image's device.json is damaged") from None


def running_config() -> DeviceConfig:
    """The running slot's device.json (``$EDGEKILN_DEVICE_CONFIG`` or the image's path)."""
    return load_device_config(Path(os.environ.get("EDGEKILN_DEVICE_CONFIG", DEVICE_CONFIG)))


@dataclasses.dataclass(frozen=True)
class Device:
    """Paths and identity of one device (the real one, or a demo over a temp directory)."""

    config: DeviceConfig
    data_dir: Path
    loader_spec: str | None = None
    booted_override: str | None = None
    keyring_path: Path = Path("/etc/edgekiln/keyring.json")
    # the slots on the boot disk only, never a stick's partition of the same name (bootdisk.py)
    slot_targets: Mapping[str, Path] = dataclasses.field(
        default_factory=lambda: {str(k): v for k, v in SLOT_DEVICES.items()}
    )
    sys_root: Path = Path("/")  # prefix for /sys and /dev lookups (a demo points it elsewhere)
    usb_globs: tuple[str, ...] = USB_GLOBS
    demo: bool = False  # reboot and network apply are simulated

    @classmethod
    def from_env(cls, data_dir: Path | None = None) -> Device:
        """The device this process runs on, as the environment and device.json describe it."""
        config = running_config()
        data = data_dir or Path(os.environ.get("EDGEKILN_DATA", config.data_dir))
        return cls(
            config=config,
            data_dir=data,
            loader_spec=os.environ.get("EDGEKILN_SLOTS"),
            booted_override=os.environ.get("EDGEKILN_BOOTED_SLOT"),
        )

    # -- paths on data -------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """``<data>/edgekiln``: agent config, events, results, TUI records."""
        return self.data_dir / "edgekiln"

    @property
    def pipeline_config(self) -> Path:
        """The agent's pipeline config (``appliance agent --config`` default)."""
        return self.state_dir / "pipeline.json"

    @property
    def events_path(self) -> Path:
        """Supervisor and pipeline events, one JSON object per line."""
        return self.state_dir / "events.jsonl"

    @property
    def actions_path(self) -> Path:
        """What technicians changed, one JSON object per line."""
        return self.state_dir / "actions.jsonl"

    @property
    def network_dir(self) -> Path:
        """systemd-networkd's directory on data (/etc/systemd/network links here in the image)."""
        return self.data_dir / "etc" / "systemd" / "network"

    @property
    def log_dir(self) -> Path:
        """Persistent logs (/var/log is bind-mounted from here in the image)."""
        return self.data_dir / "log"

    def device_id(self) -> str:
        """The id created once on data at first boot (``edgekiln-persist``)."""
        try:
            return (self.state_dir / "device-id").read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def sys_path(self, absolute: str) -> Path:
        """``absolute`` (e.g. ``/sys/class/net``) under :attr:`sys_root`."""
        return self.sys_root / absolute.lstrip("/")

    # -- slots and bundles ---------------------------------------------------------------

    def loader(self) -> Loader:
        """The boot loader back end (``$EDGEKILN_SLOTS`` or detected)."""
        from appliance.slots.config import open_loader

        return open_loader(self.loader_spec)

    def booted(self) -> Slot:
        """The running slot (kernel command line, or the override)."""
        from appliance.slots.booted import booted_slot
        from appliance.slots.state import parse_slot

        if self.booted_override:
            slot = parse_slot(self.booted_override)
            if slot is not None:
                return slot
        return booted_slot()

    def policy(self) -> Policy:
        """What a bundle must pass here: keyring (data's if newer), target, floor, version."""
        from appliance.bundle import Policy, effective_keyring
        from appliance.ota.clock import trusted_now
        from appliance.state import security_floor

        version = self.config.version
        return Policy(
            keyring=effective_keyring(self.keyring_path, self.data_dir),
            product=self.config.product,
            target=self.config.target,
            # The floor never goes below the running slot's own level (docs/decisions.md §19).
            min_security_version=security_floor(self.data_dir, self.config.security_version),
            # Expiry only with a clock synced since boot (docs/decisions.md §6).
            trusted_now=None if self.demo else trusted_now(self.data_dir),
            running_version=None if version == "unknown" else version,
        )

    # -- actions ---------------------------------------------------------------------------

    def log_action(self, action: str, **details: Any) -> None:
        """Append one technician action to ``actions.jsonl`` (fsynced) and to the log."""
        record = {"ts": round(time.time(), 3), "action": action, **details}
        line = json.dumps(record, default=str, sort_keys=True) + "\n"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.actions_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning("technician action: %s %s", action, json.dumps(details, default=str))

    def reboot(self) -> str:
        """Reboot now (``systemctl reboot``); the demo only says what it would do."""
        if self.demo:
            return "demo device: a real device would reboot now (systemctl reboot)"
        exe = shutil.which("systemctl")
        if exe is None:
            return "systemctl is not available here: reboot the device by hand"
        proc = subprocess.run([exe, "reboot"], check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"systemctl reboot failed: {proc.stderr.strip() or proc.returncode}"
        return "rebooting"
