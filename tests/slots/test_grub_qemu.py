"""The same grub.cfg in a real GRUB EFI image under QEMU/OVMF (slow: one boot ~10 s)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.slots import grubenv
from appliance.slots.grub import GRUB_MODULES, render_embed_cfg

from .conftest import ESP_LABEL, MTOOLS_ENV, GrubDisk

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(
        not (OVMF_CODE.exists() and shutil.which("qemu-system-x86_64") and shutil.which("mcopy")),
        reason="needs ovmf, qemu-system-x86 and mtools",
    ),
]


def env(committed: str, trying: str = "", tries: str = "0") -> bytes:
    return grubenv.render({"ek_committed": committed, "ek_try": trying, "ek_tries_left": tries})


def test_real_efi_grub_counts_the_try_down_on_the_fat_esp(
    make_grub_disk: Callable[..., GrubDisk], tmp_path: Path
) -> None:
    # Fake kernels: real GRUB refuses them ("invalid magic"), so the script shows its whole path:
    # try B (counted down first), fall back to A, then give up and reboot (QEMU exits).
    disk = make_grub_disk(cmdline="console=ttyS0", reboot_delay=0)
    embed = tmp_path / "embed.cfg"
    embed.write_text(render_embed_cfg(ESP_LABEL))
    efi = tmp_path / "BOOTX64.EFI"
    subprocess.run(
        [
            *("grub-mkimage", "-O", "x86_64-efi", "-c", str(embed), "-p", "/grub"),
            *("-o", str(efi), *GRUB_MODULES),
        ],
        check=True,
        capture_output=True,
    )
    for directory in ("::/EFI", "::/EFI/BOOT"):
        subprocess.run(["mmd", "-i", disk.esp, directory], check=True, env=MTOOLS_ENV)
    subprocess.run(
        ["mcopy", "-i", disk.esp, str(efi), "::/EFI/BOOT/BOOTX64.EFI"], check=True, env=MTOOLS_ENV
    )
    disk.write_env(env("A", "B", "1"), env("A", "B", "1"))
    vars_copy = tmp_path / "vars.fd"
    shutil.copy(OVMF_VARS, vars_copy)
    proc = subprocess.run(
        [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive",
            f"file={disk.image},format=raw,if=virtio",
        ],
        capture_output=True,
        timeout=240,
        check=False,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert "edgekiln: booting slot B from (hd0,gpt3)" in out, out[-3000:]
    assert "edgekiln: slot B did not load, trying slot A" in out
    assert "edgekiln: booting slot A from (hd0,gpt2)" in out
    saved = grubenv.parse(disk.read_env() or b"")
    assert saved == {"ek_committed": "A", "ek_try": "B", "ek_tries_left": "0"}
