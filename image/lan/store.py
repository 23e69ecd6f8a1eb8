"""Paired devices and their pinned certificate fingerprints, in the user's config directory.

``$XDG_CONFIG_HOME/edgekiln/lan-devices.json`` (default ``~/.config``), mode 0600: it holds
each device's bearer token.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from appliance.fsutil import atomic_write_bytes
from image.lan.errors import LanError, UnknownDevice

DEFAULT_PORT = 8443


class PairedDevice(msgspec.Struct, frozen=True):
    """One paired device."""

    id: str
    name: str
    site: str
    address: str
    port: int
    fingerprint: str
    token: str
    paired: float = 0.0

    @property
    def label(self) -> str:
        return self.name if self.name == self.id else f"{self.name} ({self.id})"


class StoreFile(msgspec.Struct):
    format: int = 1
    devices: dict[str, PairedDevice] = msgspec.field(default_factory=dict)


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/edgekiln`` (default ``~/.config/edgekiln``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgekiln"


def split_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host[:port]`` (IPv4 or a name) → (host, port)."""
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host:
        return host, int(port)
    return text, default_port


class PairedStore:
    """Read and update the paired-devices file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_dir() / "lan-devices.json"

    def load(self) -> StoreFile:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=StoreFile)
        except FileNotFoundError:
            return StoreFile()
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise LanError(f"{self.path}: {exc}; fix or remove it and pair again") from None

    def add(self, device: PairedDevice) -> None:
        doc = self.load()
        doc.devices[device.id] = msgspec.structs.replace(device, paired=round(time.time(), 3))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, msgspec.json.format(msgspec.json.encode(doc)), mode=0o600)

    def find(self, text: str) -> PairedDevice:
        """A paired device by id, name, or ``address[:port]``."""
        devices = list(self.load().devices.values())
        for device in devices:
            if text in (device.id, device.name):
                return device
        host, port = split_host_port(text)
        for device in devices:
            if device.address == host and (port in (DEFAULT_PORT, device.port)):
                return device
        raise UnknownDevice(f"{text}: not a paired device (kiln pair {text} --code CODE first)")

    def select(self, names: tuple[str, ...], site: str | None, every: bool) -> list[PairedDevice]:
        """Devices by name, by site, or all."""
        devices = list(self.load().devices.values())
        if every:
            return devices
        if site is not None:
            chosen = [d for d in devices if d.site == site]
            if not chosen:
                raise UnknownDevice(f"no paired device at site {site!r}")
            return chosen
        return [self.find(name) for name in names]
