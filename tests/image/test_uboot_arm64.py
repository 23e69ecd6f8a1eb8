"""The arm64 U-Boot boot partition and slot files: boot.scr, the two env files, fw_env.config.

Real tools: ``mkimage`` compiles the script, ``fw_printenv``/``fw_setenv`` (libubootenv) read and
write the copies through the fw_env.config the slot carries, and the device's back end
(:func:`appliance.slots.uboot.uboot_loader`) reads what they wrote and the other way round.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.slots.uboot import EnvFiles, uboot_loader
from image.build import boot, uboot
from image.recipe import load_recipe
from image.recipe.schema import RecipeError
from image.vm.qemu import VmConfig, qemu_command

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (shutil.which("mkimage") and shutil.which("fw_printenv")),
        reason="needs u-boot-tools and libubootenv-tool",
    ),
]


def tree(recipe_dir: Path, dest: Path, epoch: int = 1704067200) -> Path:
    loaded = load_recipe(recipe_dir / "coral-usb-arm64.toml")
    return boot.build_esp_tree(loaded, dest, epoch)


def device(recipe_dir: Path, tmp_path: Path) -> Path:
    """The boot partition's files where the slot mounts it, and the slot's fw_env.config."""
    esp = tree(recipe_dir, tmp_path / "boot" / "efi")
    config = tmp_path / "fw_env.config"
    text = uboot.slot_files()[uboot.FW_ENV_CONFIG].decode()
    config.write_text(text.replace(uboot.BOOT_MOUNT, str(esp)))
    return config


def fw_printenv(config: Path) -> dict[str, str]:
    out = subprocess.run(
        ["fw_printenv", "-c", str(config)], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_boot_partition_is_reproducible_and_the_script_compiles(
    recipe_dir: Path, tmp_path: Path
) -> None:
    one = tree(recipe_dir, tmp_path / "one")
    two = tree(recipe_dir, tmp_path / "two")
    names = sorted(p.name for p in one.iterdir())
    assert names == ["boot.cmd", "boot.scr", *sorted(EnvFiles().names)]
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    listing = subprocess.run(
        ["mkimage", "-l", str(one / "boot.scr")], check=True, capture_output=True, text=True
    ).stdout
    assert "AArch64 Linux Script" in listing and "Created:      Mon Jan  1 00:00:00 2024" in listing
    script = (one / "boot.cmd").read_text()
    # the device from distro boot; the slot's kernel root by PARTUUID, its slot by name
    assert "load ${devtype} ${devnum}:${ek_part} ${kernel_addr_r} /boot/Image" in script
    assert "edgekiln.slot=${ek_slot}" in script and "saveenv" not in script
    assert "fatwrite ${devtype} ${devnum}:1" in script


def test_fw_printenv_reads_the_factory_env_and_the_back_end_reads_fw_setenv(
    recipe_dir: Path, tmp_path: Path
) -> None:
    config = device(recipe_dir, tmp_path)
    assert fw_printenv(config) == {
        "ek_committed": "A", "ek_try": "", "ek_tries_left": "0", "ek_bad": "",
    }  # fmt: skip
    loader = uboot_loader(config)
    assert loader.read().committed == "A"
    loader.begin_try("B")  # what the installer does after writing slot B
    env = fw_printenv(config)
    assert env["ek_try"] == "B" and env["ek_tries_left"] == "1", env
    subprocess.run(["fw_setenv", "-c", str(config), "ek_committed", "B"], check=True)
    state = uboot_loader(config).read()
    assert state.committed == "B" and state.trying is None


def test_slot_carries_fw_env_config_for_the_mounted_boot_partition() -> None:
    text = uboot.slot_files()[uboot.FW_ENV_CONFIG].decode()
    lines = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert lines == [[f"/boot/efi/{name}", "0x0", "0x4000"] for name in EnvFiles().names]


def test_every_target_loader_is_built_and_a_mismatched_one_refused(recipe_dir: Path) -> None:
    boot.self_check(load_recipe(recipe_dir / "coral-usb-arm64.toml"))
    boot.self_check(load_recipe(recipe_dir / "jetson-orin.toml", check_files=False))  # L4T's own
    odd = recipe_dir / "uboot-amd64.toml"
    text = (recipe_dir / "generic-x86-64.toml").read_text()
    odd.write_text(text.replace('loader = "grub-efi"', 'loader = "u-boot"'))
    with pytest.raises(RecipeError, match=r"target\.loader: 'u-boot' does not fit"):
        load_recipe(odd, check_files=False)  # refused before the builder sees it


def test_arm64_vm_boots_debian_u_boot_with_virtio(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    config = VmConfig(disk=disk, arch="arm64")
    cmd = qemu_command(config, disk, tmp_path / "vars", tmp_path / "serial.log")
    assert cmd[0] == "qemu-system-aarch64"
    assert cmd[cmd.index("-machine") + 1] == "virt" and "-bios" in cmd
    assert cmd[cmd.index("-cpu") + 1] == "cortex-a57"
    assert not any("pflash" in arg for arg in cmd)
