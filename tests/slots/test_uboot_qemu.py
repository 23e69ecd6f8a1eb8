"""boot.scr in a real U-Boot (Debian's u-boot-qemu, qemu_arm64) reading our environment.

U-Boot loads its environment from the second pflash, which holds a copy we render with
:mod:`appliance.slots.ubootenv`; it then runs the boot.scr compiled from our template on the
test disk's ESP, which loads the kernel from the chosen slot's ext4. Fake kernels make
``booti`` refuse, so the script's whole path shows on the serial console.

QEMU 7.2's pflash times out U-Boot 2023.01's buffered flash writes ("Flash buffer write
timeout"), so ``saveenv`` fails here: that exercises the script's rule "boot a try only if
counting it down was saved"; the successful save is exercised by grub.cfg's tests only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.slots import ubootenv
from appliance.slots.uboot import render_boot_cmd

from .conftest import MTOOLS_ENV, GrubDisk

UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
ENV_SIZE = 0x40000  # qemu_arm64: CONFIG_ENV_SIZE, at the start of the second pflash
FLASH_SIZE = 64 << 20
# The parts of qemu_arm64's default environment that a loaded environment must bring along.
BOARD_ENV = {
    "kernel_addr_r": "0x40400000",
    "ramdisk_addr_r": "0x44000000",
    "scriptaddr": "0x40200000",
    "fdt_addr_r": "0x40000000",
    "bootdelay": "0",
    "bootcmd": "load virtio 0:1 ${scriptaddr} boot.scr && source ${scriptaddr}",
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        not (UBOOT.exists() and shutil.which("qemu-system-aarch64") and shutil.which("mkimage")),
        reason="needs u-boot-qemu, qemu-system-arm and u-boot-tools",
    ),
]


@pytest.fixture(scope="module")
def uboot_disk(
    make_grub_disk: Callable[..., GrubDisk], tmp_path_factory: pytest.TempPathFactory
) -> GrubDisk:
    disk = make_grub_disk()
    work = tmp_path_factory.mktemp("uboot")
    cmd = work / "boot.cmd"
    cmd.write_text(
        render_boot_cmd(
            devtype="virtio", devnum="0", kernel="/boot/vmlinuz", fdt=None, reset_delay=0
        )
    )
    scr = work / "boot.scr"
    subprocess.run(
        ["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", str(cmd), str(scr)],
        check=True,
        capture_output=True,
    )
    subprocess.run(["mcopy", "-i", disk.esp, str(scr), "::/boot.scr"], check=True, env=MTOOLS_ENV)
    return disk


def boot(disk: GrubDisk, env_copy: bytes, tmp_path: Path) -> str:
    flash = tmp_path / "flash1.img"
    flash.write_bytes(env_copy + b"\xff" * (FLASH_SIZE - len(env_copy)))
    proc = subprocess.run(
        [
            "qemu-system-aarch64",
            "-machine",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-bios",
            str(UBOOT),
            "-drive",
            f"if=pflash,format=raw,index=1,file={flash}",
            "-drive",
            f"file={disk.image},format=raw,if=virtio",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=240,
        check=False,
    )
    return proc.stdout.decode("utf-8", "replace").replace("\r", "")


def partuuids(disk: GrubDisk) -> dict[str, str]:
    """GPT partition name -> UUID as U-Boot's ``part uuid`` writes it (lower case)."""
    doc = json.loads(
        subprocess.run(["sfdisk", "-J", str(disk.image)], capture_output=True, check=True).stdout
    )
    return {p["name"]: p["uuid"].lower() for p in doc["partitiontable"]["partitions"]}


def ek_env(**variables: str) -> bytes:
    return ubootenv.render_copy({**BOARD_ENV, **variables}, ENV_SIZE, redundant=False)


def test_real_uboot_boots_the_committed_slot_from_our_environment(
    uboot_disk: GrubDisk, tmp_path: Path
) -> None:
    out = boot(uboot_disk, ek_env(ek_committed="B", ek_try="", ek_tries_left="0"), tmp_path)
    assert "Loading Environment from Flash... OK" in out, out[-2000:]
    # the kernel is pointed at the slot's partition UUID on this disk, not at a name
    roots = [line for line in out.splitlines() if line.startswith("edgekiln: kernel root")]
    uuids = partuuids(uboot_disk)
    assert roots[:2] == [
        f"edgekiln: kernel root PARTUUID={uuids['rootfs_b']}",
        f"edgekiln: kernel root PARTUUID={uuids['rootfs_a']}",
    ], out[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("edgekiln:")]
    lines = [line for line in lines if not line.startswith("edgekiln: kernel root")]
    assert lines[:3] == [
        "edgekiln: booting slot B from virtio 0:3 (trial 0)",
        "edgekiln: slot B did not load",  # a fake kernel: booti refuses it
        # Not the committed slot: booted on trial (edgekiln.trial=1 arms its boot deadline).
        "edgekiln: booting slot A from virtio 0:2 (trial 1)",
    ], out[-3000:]


def test_real_uboot_does_not_try_a_slot_when_the_count_cannot_be_saved(
    uboot_disk: GrubDisk, tmp_path: Path
) -> None:
    out = boot(uboot_disk, ek_env(ek_committed="B", ek_try="A", ek_tries_left="1"), tmp_path)
    lines = [line for line in out.splitlines() if line.startswith("edgekiln:")]
    assert "Saving Environment to Flash" in out, out[-2000:]
    assert lines[0] == "edgekiln: booting slot B from virtio 0:3 (trial 0)", out[-3000:]


def test_real_uboot_with_a_garbled_environment_boots_slot_a(
    uboot_disk: GrubDisk, tmp_path: Path
) -> None:
    garbled = bytearray(ek_env(ek_committed="B"))
    garbled[10] ^= 0xFF  # bad CRC: U-Boot falls back to its default environment (distro boot)
    out = boot(uboot_disk, bytes(garbled), tmp_path)
    assert "bad CRC" in out
    lines = [line for line in out.splitlines() if line.startswith("edgekiln:")]
    assert lines[0] == "edgekiln: booting slot A from virtio 0:2 (trial 0)", out[-3000:]
