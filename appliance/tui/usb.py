"""USB sticks: find removable partitions (``lsblk``) and mount one read-only for the Update screen.

A minimal image has no desktop automounter, so a technician's stick is not mounted by itself.
The Update screen lists removable, unmounted partitions that carry a file system and mounts the
chosen one read-only under ``/run/edgekiln/usb/<name>``, where bundles are then looked for.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import msgspec

from appliance.errors import ApplianceError

MOUNT_BASE = Path("/run/edgekiln/usb")
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
#: the only file systems a stick is mounted as (no other kernel driver parses a stranger's medium)
FILESYSTEMS = "vfat,exfat,ext4"


class UsbError(ApplianceError):
    """A USB partition could not be listed or mounted."""


class _BlockDevice(msgspec.Struct):
    name: str
    path: str | None = None
    rm: bool | None = None
    hotplug: bool | None = None
    tran: str | None = None
    fstype: str | None = None
    size: str | None = None
    mountpoint: str | None = None
    children: list[_BlockDevice] = msgspec.field(default_factory=list)


class _Lsblk(msgspec.Struct):
    blockdevices: list[_BlockDevice]


@dataclasses.dataclass(frozen=True)
class UsbPartition:
    """A removable partition with a file system."""

    path: str
    name: str
    fstype: str
    size: str
    mountpoint: str | None


def parse_lsblk(data: bytes) -> list[UsbPartition]:
    """Removable (rm, hotplug or usb transport) devices/partitions that carry a file system."""
    try:
        doc = msgspec.json.decode(data, type=_Lsblk)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UsbError(f"lsblk output not understood: {exc}") from None
    out: list[UsbPartition] = []

    def walk(dev: _BlockDevice, removable: bool) -> None:
        removable = removable or bool(dev.rm) or bool(dev.hotplug) or dev.tran == "usb"
        if removable and dev.fstype and not dev.children:
            out.append(
                UsbPartition(
                    dev.path or f"/dev/{dev.name}", dev.name, dev.fstype, dev.size or "?",
                    dev.mountpoint,
                )
            )  # fmt: skip
        for child in dev.children:
            walk(child, removable)

    for dev in doc.blockdevices:
        walk(dev, False)
    return out


def removable_partitions() -> list[UsbPartition]:
    """This machine's removable partitions (empty when lsblk is missing)."""
    exe = shutil.which("lsblk")
    if exe is None:
        return []
    columns = "NAME,PATH,RM,HOTPLUG,TRAN,FSTYPE,SIZE,MOUNTPOINT"
    proc = subprocess.run([exe, "-J", "-o", columns], check=False, capture_output=True)
    if proc.returncode != 0:
        raise UsbError(f"lsblk failed: {proc.stderr.decode(errors='replace').strip()}")
    return parse_lsblk(proc.stdout)


def mount_readonly(part: UsbPartition, base: Path = MOUNT_BASE) -> Path:
    """Mount ``part`` read-only under ``base/<name>``; the mount point is returned."""
    target = base / part.name
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", FILESYSTEMS, "-o", MOUNT_OPTIONS, part.path, str(target)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise UsbError(
            f"cannot mount {part.path} ({part.fstype}) on {target}: "
            f"{proc.stderr.strip() or proc.returncode}; a stick must carry vfat, exfat or ext4"
        )
    return target
