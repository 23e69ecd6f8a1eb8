"""The real grub.cfg, run by grub-emu against a real GPT/FAT/ext4 disk image."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.slots import grubenv
from appliance.slots.grub import GRUB_MODULES, initial_env, render_embed_cfg, render_grub_cfg
from appliance.slots.loader import EkCodec
from appliance.slots.state import BootState, loader_choice

from .conftest import GrubDisk, needs_grub_emu

pytestmark = [needs_grub_emu, pytest.mark.integration]
CODEC = EkCodec()


def env(committed: str = "A", trying: str = "", tries: str = "0", **extra: str) -> bytes:
    return grubenv.render(
        {"ek_committed": committed, "ek_try": trying, "ek_tries_left": tries, **extra}
    )


def model(primary: bytes | None, backup: bytes | None) -> str:
    """What our Linux side believes the loader will boot (must agree with GRUB)."""
    for block in (primary, backup):
        variables = grubenv.parse(block) if block is not None else None
        if variables is not None and CODEC.valid(variables):
            return loader_choice(CODEC.decode(variables))[0]
    return loader_choice(BootState())[0]


def partuuid(disk: GrubDisk, name: str) -> str:
    """A partition's GPT UUID, as the kernel (blkid) and GRUB's probe write it."""
    table = json.loads(subprocess.run(["sfdisk", "-J", str(disk.image)], capture_output=True,
                                      check=True).stdout)["partitiontable"]  # fmt: skip
    return next(p["uuid"].lower() for p in table["partitions"] if p["name"] == name)


def test_initial_env_boots_slot_a_with_the_right_cmdline(grub_disk: GrubDisk) -> None:
    grub_disk.write_env(initial_env(), initial_env())
    boot = grub_disk.boot()
    assert boot.slot == "A", boot.output
    # the slot's partition UUID on the ESP's own disk: never a name another disk can carry
    assert boot.cmdline == (
        f"(hd0,gpt2)/boot/vmlinuz root=PARTUUID={partuuid(grub_disk, 'rootfs_a')} ro "
        "rootflags=noload rootwait "
        "panic=10 edgekiln.trial=0 edgekiln.slot=A console=ttyS0,115200 quiet"
    )
    assert "EK-INITRD[(hd0,gpt2)/boot/initrd.img]" in boot.output
    assert grub_disk.read_env() == initial_env()


def test_committed_b_boots_partition_3(grub_disk: GrubDisk) -> None:
    grub_disk.write_env(env("B"), env("B"))
    boot = grub_disk.boot()
    assert boot.slot == "B"
    uuid = partuuid(grub_disk, "rootfs_b")
    assert boot.cmdline.startswith(f"(hd0,gpt3)/boot/vmlinuz root=PARTUUID={uuid} ")


def test_try_is_counted_down_before_boot_and_happens_once(grub_disk: GrubDisk) -> None:
    grub_disk.write_env(env("A", "B", "1"), env("A", "B", "1"))
    tried = grub_disk.boot()
    assert tried.slot == "B"
    # The tried kernel arms its boot deadline and reboots on a panic (appliance.slots.trial).
    assert " panic=10 edgekiln.trial=1 edgekiln.slot=B " in f"{tried.cmdline} "
    for name in ("grubenv", "grubenv.bak"):
        saved = grubenv.parse(grub_disk.read_env(name) or b"")
        assert saved == {"ek_committed": "A", "ek_try": "B", "ek_tries_left": "0"}
    # The tried system never committed (hang, crash, power cut, its deadline): back to A, and
    # it stays there, not on trial.
    for _ in range(2):
        again = grub_disk.boot()
        assert again.slot == "A" and "edgekiln.trial=0" in again.cmdline.split()


def test_foreign_variables_survive_save_env(grub_disk: GrubDisk) -> None:
    grub_disk.write_env(env("B", "A", "1", other="keep me"), None)
    assert grub_disk.boot().slot == "A"
    saved = grubenv.parse(grub_disk.read_env() or b"")
    assert saved is not None
    assert saved["other"] == "keep me"
    assert saved["ek_tries_left"] == "0"


@pytest.mark.parametrize(
    ("primary", "backup", "expected"),
    [
        (None, None, "A"),
        (b"garbage" * 100, None, "A"),
        (b"", env("B"), "B"),
        (env("C"), env("B"), "B"),
        (env("a"), None, "A"),
        (env("B", "B", "1"), None, "B"),
        (env("B", "X", "1"), None, "B"),
        (env("B", "A", "2"), None, "B"),
        (b"# GRUB Environment Block\nek_committed=B", env("A", "B", "1"), "B"),
        (env("A", "B", "1")[:100], env("B"), "B"),
    ],
    ids=[
        "missing",
        "garbage",
        "empty-primary",
        "unknown-slot",
        "lowercase",
        "try-equals-committed",
        "unknown-try",
        "tries-not-1",
        "cut-value-uses-backup-try",
        "truncated-primary",
    ],
)
def test_garbled_env_boots_a_valid_slot(
    grub_disk: GrubDisk, primary: bytes | None, backup: bytes | None, expected: str
) -> None:
    grub_disk.write_env(primary, backup)
    boot = grub_disk.boot()
    assert boot.slot == expected, boot.output
    assert model(primary, backup) == expected


def test_try_from_backup_is_counted_down_in_the_backup(grub_disk: GrubDisk) -> None:
    grub_disk.write_env(b"torn", env("A", "B", "1"))
    assert grub_disk.boot().slot == "B"
    assert grubenv.parse(grub_disk.read_env("grubenv.bak") or b"") == {
        "ek_committed": "A",
        "ek_try": "B",
        "ek_tries_left": "0",
    }
    assert grub_disk.boot().slot == "A"


@pytest.mark.slow
def test_torn_primary_at_every_offset(grub_disk: GrubDisk) -> None:
    """Each tear of the primary (new prefix over old block, truncation, one corrupt byte).

    At every offset our model must choose a slot whose try was fully recorded or not at all.
    GRUB's own envblk parser (``grub-editenv list``) must agree with ours at every offset of
    the variable lines and every 16th of the ``#`` padding (a comment line: tears there are
    equivalent); every distinct outcome is then booted by the real grub.cfg in grub-emu, which
    must choose what our model chooses.
    """
    old, new = env("A"), env("A", "B", "1")
    backup = env("A")
    vars_end = new.index(b"\n#", len(grubenv.SIGNATURE + grubenv.WARNING) - 1) + 2
    classes: dict[str, bytes] = {}
    tears: dict[bytes, int] = {}
    for offset in range(grubenv.BLOCK_SIZE + 1):
        tears.setdefault(new[:offset] + old[offset:], offset)
        tears.setdefault(new[:offset], offset)
        if offset < grubenv.BLOCK_SIZE:
            tears.setdefault(new[:offset] + bytes([new[offset] ^ 0x5A]) + new[offset + 1 :], offset)
    path = grub_disk.root / "torn.env"
    compared = 0
    for torn, offset in tears.items():
        ours = grubenv.parse(torn)
        assert model(torn, backup) in ("A", "B")
        sampled = offset <= vars_end or offset % 16 == 0
        if sampled and ours is not None and "\n" not in "".join(ours):
            path.write_bytes(torn)
            listed = subprocess.run(
                ["grub-editenv", str(path), "list"], capture_output=True, check=False
            )
            assert listed.returncode == 0, (offset, listed.stderr)
            expected = "".join(f"{k}={v}\n" for k, v in ours.items())
            assert listed.stdout.decode("utf-8", "replace") == expected, offset
            compared += 1
        key = repr(sorted((ours or {}).items())) if ours is not None else "None"
        classes.setdefault(key, torn)
    assert compared > 300
    assert 3 <= len(classes) < 200
    for torn in classes.values():
        grub_disk.write_env(torn, backup)
        assert grub_disk.boot().slot == model(torn, backup), torn


def test_missing_kernel_falls_back_to_the_other_slot(
    make_grub_disk: Callable[..., GrubDisk],
) -> None:
    disk = make_grub_disk(kernels={"B": False})
    disk.write_env(env("A", "B", "1"), None)
    boot = disk.boot()
    assert boot.slot == "A"
    assert "slot B did not load" in boot.output
    assert "edgekiln.trial=0" in boot.cmdline.split()  # the committed slot is not on trial


def test_a_committed_slot_that_does_not_load_boots_the_other_on_trial(
    make_grub_disk: Callable[..., GrubDisk],
) -> None:
    disk = make_grub_disk(kernels={"A": False})
    disk.write_env(initial_env(), None)
    boot = disk.boot()
    assert boot.slot == "B"
    assert "edgekiln.trial=1" in boot.cmdline.split()


def test_no_loadable_slot_reboots(make_grub_disk: Callable[..., GrubDisk]) -> None:
    disk = make_grub_disk(kernels={"A": False, "B": False}, reboot_delay=0)
    disk.write_env(initial_env(), None)
    boot = disk.boot()
    assert boot.slot is None
    assert "no slot could be loaded" in boot.output


def test_render_refuses_script_metacharacters() -> None:
    with pytest.raises(ValueError, match="GRUB script"):
        render_grub_cfg(cmdline='init=/bin/sh"; reboot')
    with pytest.raises(ValueError, match="path"):
        render_grub_cfg(kernel="/boot/vm linuz")


@pytest.mark.skipif(
    not Path("/usr/lib/grub/x86_64-efi").is_dir(), reason="needs grub-efi-amd64-bin"
)
def test_grub_mkimage_accepts_the_module_list(tmp_path: Path) -> None:
    embed = tmp_path / "embed.cfg"
    embed.write_text(render_embed_cfg("ESP"))
    subprocess.run(
        [
            *("grub-mkimage", "-O", "x86_64-efi", "-c", str(embed), "-p", "/grub"),
            *("-o", str(tmp_path / "BOOTX64.EFI"), *GRUB_MODULES),
        ],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "BOOTX64.EFI").stat().st_size > 100_000
