"""Partitions are the device's own only on the disk that holds /: the udev helper's decision.

``/usr/lib/edgekiln/on-boot-disk`` (run by ``61-edgekiln-boot-disk.rules``) is run for real with
``/bin/sh`` against a sysfs tree laid out as the kernel lays it out (virtio disk + USB stick, both
with partitions named ``rootfs_b`` and ``data``), and against this host's real sysfs with two
loop devices whose partitions the kernel added (when this host allows it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bootdisk import LINK_DIR, NAMES, SLOT_DEVICES, partition
from appliance.device import Device, DeviceConfig
from appliance.ota.installer import DEFAULT_TARGETS

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "image" / "build" / "overlay"
HELPER = OVERLAY / "usr/lib/edgekiln/on-boot-disk"
RULE = OVERLAY / "usr/lib/udev/rules.d/61-edgekiln-boot-disk.rules"

VIRTIO = "devices/pci0000:00/0000:00:04.0/virtio2/block/vda"
USB = "devices/pci0000:00/0000:00:1d.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sda"


def _disk(sys: Path, where: str, major: int, parts: int) -> None:
    disk = sys / where
    name = disk.name
    disk.mkdir(parents=True)
    (disk / "dev").write_text(f"{major}:0\n")
    (disk / "uevent").write_text(f"MAJOR={major}\nMINOR=0\nDEVNAME={name}\nDEVTYPE=disk\n")
    links = [(sys / "class/block" / name, disk), (sys / "dev/block" / f"{major}:0", disk)]
    for n in range(1, parts + 1):
        part = disk / f"{name}{n}"
        part.mkdir()
        (part / "partition").write_text(f"{n}\n")
        (part / "dev").write_text(f"{major}:{n}\n")
        (part / "uevent").write_text(
            f"MAJOR={major}\nMINOR={n}\nDEVNAME={name}{n}\nDEVTYPE=partition\nPARTN={n}\n"
        )
        links += [(sys / "class/block" / part.name, part), (sys / f"dev/block/{major}:{n}", part)]
    for link, target in links:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent))  # relative, as in /sys


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """vda: boot, rootfs_a, rootfs_b, data; sda (a stick): rootfs_b, data."""
    sys = tmp_path / "sys"
    _disk(sys, VIRTIO, 254, 4)
    _disk(sys, USB, 8, 2)
    return sys


def on_boot_disk(name: str, sys: Path | str, root: str | None) -> bool:
    env = {"PATH": os.environ["PATH"], "EDGEKILN_SYSFS": str(sys)}
    if root is not None:
        env["EDGEKILN_ROOT_DEV"] = root
    proc = subprocess.run(["/bin/sh", str(HELPER), name], env=env, capture_output=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


@pytest.mark.parametrize("root", ["254:2", "254:3"])
def test_only_partitions_of_the_roots_disk_are_the_devices_own(sysfs: Path, root: str) -> None:
    assert [n for n in ("vda1", "vda2", "vda3", "vda4") if on_boot_disk(n, sysfs, root)] == [
        "vda1", "vda2", "vda3", "vda4",
    ]  # fmt: skip
    assert not on_boot_disk("sda1", sysfs, root)  # the stick's rootfs_b
    assert not on_boot_disk("sda2", sysfs, root)  # the stick's data
    assert not on_boot_disk("vda", sysfs, root)  # a whole disk is no partition


def test_a_root_on_the_stick_makes_only_the_stick_its_own(sysfs: Path) -> None:
    assert on_boot_disk("sda2", sysfs, "8:1") and not on_boot_disk("vda4", sysfs, "8:1")


@pytest.mark.parametrize(
    ("name", "root"),
    [
        ("vda3", "254:0"),  # / on a whole disk: nothing is linked (fail closed)
        ("vda3", "254:9"),  # / on a device sysfs does not know
        ("vda3", "0:27"),  # / on an overlay or tmpfs (a container, a development machine)
        ("vda3", "254:2/../../.."),
        ("../vda3", "254:2"),
        ("", "254:2"),
        ("nvme0n1p2", "254:2"),  # no such partition
    ],
)
def test_anything_unclear_links_nothing(sysfs: Path, name: str, root: str) -> None:
    assert not on_boot_disk(name, sysfs, root)


def test_this_hosts_root_is_read_when_not_given(sysfs: Path) -> None:
    """Without EDGEKILN_ROOT_DEV the helper asks ``mountpoint -d /`` (not a vda partition here)."""
    real = subprocess.run(["mountpoint", "-d", "/"], capture_output=True, text=True, check=False)
    if real.stdout.strip() in ("254:1", "254:2", "254:3", "254:4"):
        pytest.skip("this host's / has a device number of the fake tree")
    assert not on_boot_disk("vda3", sysfs, None)


@pytest.fixture
def loop_disks(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two loop devices over GPT images (boot disk; stick with rootfs_b and data), partitions
    added by the kernel (``partx -a``); skipped where this host allows no loop devices."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("partx"):
        pytest.skip("needs root, losetup and partx")
    tables = {
        "disk": "label: gpt\nsize=1M, name=boot\nsize=1M, name=rootfs_a\n"
        "size=1M, name=rootfs_b\nsize=1M, name=data\n",
        "stick": "label: gpt\nsize=1M, name=rootfs_b\nsize=1M, name=data\n",
    }
    attached: list[str] = []
    try:
        for name, table in tables.items():
            image = tmp_path / f"{name}.img"
            with image.open("wb") as f:
                f.truncate(8 << 20)
            subprocess.run(["sfdisk", "-q", str(image)], input=table.encode(), check=True)
            proc = subprocess.run(
                ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                pytest.skip(f"no loop device here: {proc.stderr.strip()}")
            attached.append(proc.stdout.strip())
            if subprocess.run(
                ["partx", "-a", attached[-1]], capture_output=True, check=False
            ).returncode:
                pytest.skip("the kernel does not add partitions of loop devices here")
        yield attached[0].removeprefix("/dev/"), attached[1].removeprefix("/dev/")
    finally:
        for dev in attached:
            subprocess.run(["partx", "-d", dev], capture_output=True, check=False)
            subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


def test_real_sysfs_with_the_kernels_own_partitions(loop_disks: tuple[str, str]) -> None:
    disk, stick = loop_disks
    sys = Path("/sys")
    if not (sys / "class/block" / f"{disk}p2").exists():
        pytest.skip("partitions of loop devices are not visible in this sysfs")
    root = (sys / "class/block" / f"{disk}p2" / "dev").read_text().strip()  # / on rootfs_a
    own = [f"{disk}p{n}" for n in range(1, 5)]
    assert all(on_boot_disk(p, sys, root) for p in own)
    assert not any(on_boot_disk(f"{stick}p{n}", sys, root) for n in (1, 2))
    assert not on_boot_disk(disk, sys, root)


def test_every_consumer_uses_the_boot_disk_links() -> None:
    """fstab, the installer, the TUI's device and the rule agree on /dev/disk/edgekiln/<name>."""
    fstab = (OVERLAY / "etc/fstab").read_text()
    assert f"{partition('data')}  /data " in fstab
    assert f"{partition('boot')}  /boot/efi " in fstab
    assert "PARTLABEL=" not in "".join(
        line for line in fstab.splitlines() if not line.startswith("#")
    )
    assert (
        DEFAULT_TARGETS == SLOT_DEVICES == {"A": LINK_DIR / "rootfs_a", "B": LINK_DIR / "rootfs_b"}
    )
    assert dict(Device(DeviceConfig(), Path("/data")).slot_targets) == dict(SLOT_DEVICES)
    rule = RULE.read_text()
    assert f'ENV{{ID_PART_ENTRY_NAME}}=="{"|".join(NAMES)}"' in rule
    assert 'PROGRAM=="/usr/lib/edgekiln/on-boot-disk %k"' in rule
    assert 'SYMLINK+="disk/edgekiln/$env{ID_PART_ENTRY_NAME}"' in rule
    assert HELPER.stat().st_mode & 0o111
    with pytest.raises(ValueError, match="not one of the device's partitions"):
        partition("rootfs_c")
