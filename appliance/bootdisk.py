"""The device's own partitions: found by GPT name on the disk that holds the running root only.

A USB stick whose partition is named ``rootfs_b`` or ``data`` (another device's image written to a
stick, or a hostile one) must never be written as a slot or mounted as data. The image's udev rule
``61-edgekiln-boot-disk.rules`` links a partition named ``boot``, ``rootfs_a``, ``rootfs_b`` or
``data`` as ``/dev/disk/edgekiln/<name>`` only when ``/usr/lib/edgekiln/on-boot-disk`` finds it on
the same disk as the partition mounted on ``/``; fstab mounts data and the ESP from there and the
installer writes slots there. ``/dev/disk/by-partlabel/`` is never used: udev points it at
whichever disk with that name appeared last.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from appliance.slots.state import Slot

LINK_DIR = Path("/dev/disk/edgekiln")
#: GPT partition names the rule links (the image's partition table names them so)
NAMES = ("boot", "rootfs_a", "rootfs_b", "data")


def partition(name: str) -> Path:
    """``/dev/disk/edgekiln/<name>``: partition ``name`` of the boot disk."""
    if name not in NAMES:
        raise ValueError(f"{name!r} is not one of the device's partitions ({', '.join(NAMES)})")
    return LINK_DIR / name


SLOT_DEVICES: Mapping[Slot, Path] = {"A": partition("rootfs_a"), "B": partition("rootfs_b")}
