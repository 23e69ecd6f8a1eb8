"""boot.scr with the A/B variables in two files on the FAT partition, in a real U-Boot.

Debian's qemu_arm64 U-Boot keeps its own environment in the second pflash, and QEMU 7.2's
pflash makes its ``saveenv`` fail (test_uboot_qemu.py). With ``EnvFiles`` the script imports
the two redundant copies from the FAT partition and counts a try down with ``fatwrite``: here
the try is really counted down by U-Boot, and ``fw_printenv`` reads what U-Boot wrote.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.slots import ubootenv
from appliance.slots.uboot import EnvFiles, render_boot_cmd

from .conftest import MTOOLS_ENV, GrubDisk
from .test_uboot_qemu import UBOOT, boot

FILES = EnvFiles()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        not (
            UBOOT.exists()
            and shutil.which("qemu-system-aarch64")
            and shutil.which("mkimage")
            and shutil.which("fw_printenv")
        ),
        reason="needs u-boot-qemu, qemu-system-arm, u-boot-tools and libubootenv-tool",
    ),
]


@pytest.fixture()
def disk(make_grub_disk: Callable[..., GrubDisk], tmp_path: Path) -> GrubDisk:
    disk = make_grub_disk()
    cmd = tmp_path / "boot.cmd"
    cmd.write_text(
        render_boot_cmd(
            devtype="virtio", devnum="0", kernel="/boot/vmlinuz", fdt=None, reset_delay=0,
            env_files=FILES,
        )
    )  # fmt: skip
    scr = tmp_path / "boot.scr"
    subprocess.run(
        ["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d", str(cmd), str(scr)],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["mcopy", "-o", "-i", disk.esp, str(scr), "::/boot.scr"], check=True, env=MTOOLS_ENV
    )
    return disk


def put_copies(disk: GrubDisk, copies: list[bytes], tmp_path: Path) -> None:
    for name, block in zip(FILES.names, copies, strict=True):
        local = tmp_path / name
        local.write_bytes(block)
        subprocess.run(
            ["mcopy", "-o", "-i", disk.esp, str(local), f"::/{name}"], check=True, env=MTOOLS_ENV
        )


def fw_printenv(disk: GrubDisk, tmp_path: Path) -> dict[str, str]:
    """The two copies as Linux sees them, read by libubootenv with our fw_env.config."""
    where = tmp_path / "esp-files"
    where.mkdir(exist_ok=True)
    for name in FILES.names:
        (where / name).unlink(missing_ok=True)
        subprocess.run(
            ["mcopy", "-i", disk.esp, f"::/{name}", str(where / name)], check=True, env=MTOOLS_ENV
        )
    config = tmp_path / "fw_env.config"
    config.write_text(FILES.fw_env_config(str(where)))
    out = subprocess.run(
        ["fw_printenv", "-c", str(config)], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def copy(flag: int, **variables: str) -> bytes:
    return ubootenv.render_copy(variables, FILES.size, redundant=True, flag=flag)


def edgekiln_lines(out: str) -> list[str]:
    return [
        line
        for line in out.splitlines()
        if line.startswith("edgekiln:") and not line.startswith("edgekiln: kernel root")
    ]


def test_uboot_counts_the_try_down_in_the_other_file(disk: GrubDisk, tmp_path: Path) -> None:
    put_copies(
        disk,
        [
            copy(7, ek_committed="B", ek_try="A", ek_tries_left="1", ek_bad=""),
            copy(6, ek_committed="B", ek_try="", ek_tries_left="0", ek_bad=""),
        ],
        tmp_path,
    )
    out = boot(disk, b"", tmp_path)
    lines = edgekiln_lines(out)
    assert lines[:2] == [
        "edgekiln: environment copy 0, committed B",
        "edgekiln: booting slot A from virtio 0:2 (trial 1)",
    ], out[-3000:]
    # U-Boot wrote copy 1 with flag 8: fw_printenv now reads the counted-down try
    env = fw_printenv(disk, tmp_path)
    assert env["ek_committed"] == "B" and env["ek_try"] == "A", env
    assert env["ek_tries_left"] == "0", env
    raw = (tmp_path / "esp-files" / FILES.names[1]).read_bytes()
    assert raw[4] == 8 and ubootenv.parse_copy(raw, redundant=True) is not None
    # the next boot no longer tries A: it boots the committed slot
    lines = edgekiln_lines(boot(disk, b"", tmp_path))
    assert lines[:2] == [
        "edgekiln: environment copy 1, committed B",
        "edgekiln: booting slot B from virtio 0:3 (trial 0)",
    ], lines


def test_a_copy_with_a_bad_crc_loses_and_flags_wrap(disk: GrubDisk, tmp_path: Path) -> None:
    newer = bytearray(copy(0, ek_committed="A", ek_try="", ek_tries_left="0"))
    newer[20] ^= 0xFF
    # copy 1 (flag 0 after 0xff) is newer but garbled: copy 0 (flag 0xff) is used
    put_copies(disk, [copy(0xFF, ek_committed="B", ek_tries_left="0"), bytes(newer)], tmp_path)
    lines = edgekiln_lines(boot(disk, b"", tmp_path))
    assert lines[:2] == [
        "edgekiln: environment copy 0, committed B",
        "edgekiln: booting slot B from virtio 0:3 (trial 0)",
    ], lines
    # both intact: flag 0 after 0xff wins
    put_copies(
        disk,
        [copy(0xFF, ek_committed="B"), copy(0, ek_committed="A", ek_try="B", ek_tries_left="1")],
        tmp_path,
    )
    lines = edgekiln_lines(boot(disk, b"", tmp_path))
    assert lines[:2] == [
        "edgekiln: environment copy 1, committed A",
        "edgekiln: booting slot B from virtio 0:3 (trial 1)",
    ], lines
    env = fw_printenv(disk, tmp_path)
    assert env["ek_tries_left"] == "0" and env["ek_committed"] == "A", env
    assert (tmp_path / "esp-files" / FILES.names[0]).read_bytes()[4] == 1
