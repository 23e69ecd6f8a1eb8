"""coral-devboard: the coral root with the board's layout, its U-Boot supplied by the user.

The stand-in for the board's U-Boot is Debian's qemu_arm64 build (the real one is the Coral/NXP
flash.bin, which is never downloaded): ``kiln build`` writes it raw at 33 KiB, the first
partition starts at 8 MiB, ``kiln inspect`` checks the layout and the manifest, and the image's
own boot.scr runs in that U-Boot under QEMU (the board's device tree does not fit QEMU's
machine, so the check ends where U-Boot hands over to the kernel).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image.vm.qemu import UBOOT_QEMU_ARM64, Vm, VmConfig
from tests.e2e.conftest import arm64_skip_reason

REPO = Path(__file__).resolve().parents[2]
KILN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "kiln"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.xdist_group("arm64"),  # the arm64 base and runtime: tests/scheduling.py
    pytest.mark.skipif(
        not (UBOOT_QEMU_ARM64.exists() and shutil.which("qemu-system-aarch64")),
        reason="needs u-boot-qemu and qemu-system-arm",
    ),
]


def recipe(tmp_path: Path, bootloader: Path | None) -> Path:
    top = tmp_path / "devboard.toml"
    lines = [f'extends = "{REPO / "recipes" / "coral-devboard.toml"}"']
    if bootloader is not None:
        lines += ["[board]", f'bootloader = "{bootloader}"']
    top.write_text("\n".join(lines) + "\n")
    return top


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(KILN), *args], capture_output=True, text=True, check=False)


def test_missing_board_u_boot_is_refused_before_any_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = kiln("build", str(recipe(tmp_path, None)), "-o", str(out))
    assert done.returncode != 0
    assert "board.bootloader is not set" in done.stderr and "never downloads" in done.stderr
    assert not out.exists()
    gone = kiln("build", str(recipe(tmp_path, tmp_path / "flash.bin")), "-o", str(out))
    assert gone.returncode != 0 and "board.bootloader" in gone.stderr, gone.stderr
    assert "does not exist" in gone.stderr and not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.skipif(arm64_skip_reason() is not None, reason=str(arm64_skip_reason()))
def test_devboard_layout_inspected_and_boot_scr_runs_in_u_boot(tmp_path: Path) -> None:
    stand_in = tmp_path / "flash.bin"
    shutil.copyfile(UBOOT_QEMU_ARM64, stand_in)
    out = tmp_path / "out"
    # flashed by the board's own tools, never updated here: no .img.zst, no bundle
    top = recipe(tmp_path, stand_in)
    done = kiln("build", str(top), "-o", str(out), "--skip", "compress,bundle")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "build-report.json").read_text())
    image = Path(report["outputs"]["image"])
    # the board's U-Boot, raw at 33 KiB; the first partition at 8 MiB
    with image.open("rb") as handle:
        handle.seek(33 * 1024)
        assert handle.read(stand_in.stat().st_size) == stand_in.read_bytes()
    manifest = json.loads(Path(report["outputs"]["manifest"]).read_text())
    assert manifest["components"]["bootloader"]["offset"] == 33 * 1024
    inspected = kiln("inspect", str(image), "--json")
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    starts = {p["name"]: p["start"] for p in info["partitions"]}
    assert starts["boot"] == 8 << 20
    assert info["boot"]["loader"] == "u-boot" and info["boot"]["boot.scr"]
    assert info["boot"]["env"]["ek_committed"] == "A"
    assert info["slots"]["rootfs_a"]["kernel_image"] is True
    check = info["verification"]
    assert check["bootloader"] == "ok" and check["signature"] == "valid", check
    assert set(check["partitions"].values()) == {"ok"}, check
    # the same boot.scr, run by the stand-in U-Boot, reads the env files and loads slot A's
    # kernel and initrd; the stand-in's default environment has no fdt_addr_r (QEMU hands it
    # its device tree), so loading the board's dtb is where it stops: the board's U-Boot sets it
    kernel = r"\d+ bytes read in \d+ ms.*\r?\n\d+ bytes read in \d+ ms.*\r?\n"
    with Vm(VmConfig(disk=image, arch="arm64", overlay=True, bios=stand_in), tmp_path / "vm") as vm:
        vm.start()
        vm.wait_for(r"edgekiln: environment copy 0, committed A", 600)
        slot_a = r"edgekiln: booting slot A from virtio 0:2 \(trial 0\)\r?\n.*\r?\n"
        vm.wait_for(slot_a + kernel, 600)
