"""Fast checks of what the QEMU end-to-end run depends on (no VM, no build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cli import COMMANDS
from tests.e2e.device import PIPELINE, STICK_LABEL, write_recipe

OVERLAY = Path(__file__).resolve().parents[2] / "image" / "build" / "overlay"


def test_every_appliance_command_is_collected_by_pyinstaller() -> None:
    """The frozen runtime imports commands lazily: each module must be found by collect_submodules
    (a package without __init__.py is skipped, and its command then fails on the device)."""
    pytest.importorskip("PyInstaller")
    from PyInstaller.utils.hooks import collect_submodules

    found = set(collect_submodules("appliance"))
    missing = sorted(t.split(":")[0] for t in COMMANDS.values() if t.split(":")[0] not in found)
    assert not missing, f"not frozen: {missing} (add the package's __init__.py)"


def test_profile_recipe_is_a_valid_recipe(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from image.recipe import load_recipe

    loaded = load_recipe(write_recipe(tmp_path / "r", "9.9.9", broken_model=True))
    recipe = loaded.recipe
    assert recipe.version == "9.9.9" and recipe.target.name == "generic-x86-64"
    # /dev/console is the last console=: the serial port, so the journal reaches the tests
    assert recipe.kernel.cmdline.split().index("console=ttyS0,115200") > 0
    assert recipe.health.budget_factor > 1.0
    # the QEMU profile: no OpenCV (the test-pattern camera needs none), slots smaller than the
    # default image's (the installer writes every byte of a slot: install time under TCG)
    assert recipe.runtime.extras == ()
    assert recipe.partitions.rootfs_mib < 1280


def test_qemu_profile_slots_hold_the_reference_models() -> None:
    """The builder's size check passes for the QEMU profile with the real reference models."""
    from image.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "qemu-x86-64.toml")
    assert recipe.recipe.partitions.rootfs_mib == 992


def test_usb_update_unit_matches_the_stick_label() -> None:
    rule = (OVERLAY / "usr/lib/udev/rules.d/90-edgekiln-usb-update.rules").read_text()
    assert f'ENV{{ID_FS_LABEL}}=="{STICK_LABEL}"' in rule
    assert "edgekiln-usb-update@%k.service" in rule
    assert (OVERLAY / "etc/systemd/system/edgekiln-usb-update@.service").is_file()
    script = OVERLAY / "usr/lib/edgekiln/usb-update"
    assert script.stat().st_mode & 0o111, "the script must be executable"
    assert len(STICK_LABEL) <= 11, "a FAT label holds at most 11 characters"
    assert str(PIPELINE["source"]).startswith("npz:/opt/edgekiln/models/primary/")


def test_the_boot_partition_is_checked_and_the_power_button_handled() -> None:
    """What test_shutdown_and_esp.py relies on, without a VM: fsck.vfat (dosfstools) checks the
    ESP before its mount (fstab pass 2), and acpid (no D-Bus, so no logind) powers off on the
    button."""
    from image.recipe import load_recipe

    fields = {
        line.split()[1]: line.split()
        for line in (OVERLAY / "etc/fstab").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert fields["/boot/efi"][2] == "vfat" and fields["/boot/efi"][5] == "2", fields["/boot/efi"]
    rule = (OVERLAY / "etc/acpi/events/edgekiln-power-button").read_text()
    assert "event=button[ /]power" in rule and "action=/bin/systemctl poweroff" in rule
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "qemu-x86-64.toml")
    packages = {*recipe.recipe.rootfs.packages, *recipe.recipe.rootfs.extra_packages}
    assert {"dosfstools", "acpid"} <= packages


def test_the_e2e_command_line_keeps_the_profiles_own() -> None:
    """The e2e recipes replace the QEMU profile's kernel command line (console order, status):
    every option of the profile's (``modules-load=vivid``: the camera test_boot_disk.py reads)
    is in theirs too, so the devices boot what the profile boots."""
    from image.recipe import load_recipe
    from tests.e2e.device import CMDLINE

    profile = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "qemu-x86-64.toml")
    own = profile.recipe.kernel.cmdline.split()
    assert "modules-load=vivid" in own
    assert set(own) <= set(CMDLINE.split()), set(own) - set(CMDLINE.split())
