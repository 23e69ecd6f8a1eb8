"""The running slot a telemetry message names comes from the loader's ``edgekiln.slot=``."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.telemetry.identity import running_slot


@pytest.mark.parametrize(
    ("cmdline", "slot"),
    [
        # What the GRUB and U-Boot templates hand the kernel (appliance/slots/grub.py, uboot.py):
        # the root by the PARTUUID read on the boot disk, the slot by name.
        (
            "BOOT_IMAGE=/boot/vmlinuz root=PARTUUID=4B1A2C3D-0000-4000-8000-000000000003 ro "
            "rootflags=noload rootwait panic=5 edgekiln.slot=B",
            "b",
        ),
        ("root=PARTLABEL=rootfs_a ro edgekiln.slot=A", "a"),
        ("root=/dev/vda2 ro quiet", "unknown"),
    ],
)
def test_running_slot_follows_the_loader_not_the_root_word(
    tmp_path: Path, cmdline: str, slot: str
) -> None:
    path = tmp_path / "cmdline"
    path.write_text(cmdline + "\n")
    assert running_slot(path) == slot
