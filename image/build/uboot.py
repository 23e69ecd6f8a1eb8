"""The boot partition and slot files of a U-Boot target (arm64): boot.scr and the A/B env.

The protocol belongs to :mod:`appliance.slots.uboot` (docs/decisions.md §3): this module only
renders its boot script for the recipe and compiles it with ``mkimage`` (``SOURCE_DATE_EPOCH``
makes the header reproducible), and writes the factory environment (slot A committed) into
both redundant copies. The environment lives in two files on the FAT boot partition
(``EnvFiles``, docs/decisions.md §32): the script imports them and counts a try down with
``fatwrite``; Linux reads and writes them through ``/etc/fw_env.config`` (also in the slot), so
``fw_printenv``/``fw_setenv`` and the agent see the same copies.

U-Boot finds ``boot.scr`` by its distro boot (``boot_prefixes`` ``/`` and ``/boot/`` of the first
partition when none is marked bootable), which sets ``${devtype}``/``${devnum}`` for the script.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from image.build.fs import run_tool
from image.errors import BuildError
from image.recipe import LoadedRecipe

#: where the slot mounts the boot partition (image/build/overlay/etc/fstab)
BOOT_MOUNT = "/boot/efi"
KERNEL = "/boot/Image"  # uncompressed arm64 Image in each slot (booti cannot unpack vmlinuz.gz)
INITRD = "/boot/initrd.img"
FW_ENV_CONFIG = "etc/fw_env.config"
DTB = "/boot/dtb"  # board.dtb, hard-linked from the kernel package's device trees
#: targets whose board boots only its vendor's U-Boot, which the user supplies (board.bootloader)
NEEDS_BOOTLOADER = {"coral-devboard": "the Coral Dev Board's U-Boot (i.MX 8M flash.bin)"}


class BoardFilesMissing(BuildError):
    """A board's user-supplied boot files are not set in the recipe."""


def check_board(loaded: LoadedRecipe) -> None:
    """Refuse a board target whose vendor U-Boot is not supplied (it is never downloaded)."""
    t, board = loaded.recipe.target, loaded.recipe.board
    what = NEEDS_BOOTLOADER.get(t.name)
    if what and not board.bootloader:
        raise BoardFilesMissing(
            f"{loaded.path}: board.bootloader is not set: {t.name} boots {what}, which you "
            "supply (the vendor's build; edgekiln never downloads it); set board.bootloader "
            "to the file (see the comments in recipes/coral-devboard.toml)"
        )


def boot_cmd(loaded: LoadedRecipe) -> str:
    """boot.cmd for this recipe: device from distro boot, kernel and initrd from the slot."""
    from appliance.slots.uboot import EnvFiles, render_boot_cmd

    return render_boot_cmd(
        devtype="${devtype}",
        devnum="${devnum}",
        kernel=KERNEL,
        initrd=INITRD,
        # the board's device tree from the slot, else the firmware's own (${fdtcontroladdr})
        fdt=DTB if loaded.recipe.board.dtb else None,
        cmdline=loaded.recipe.kernel.cmdline,
        env_files=EnvFiles(),
    )


def initial_env() -> bytes:
    """One copy of the factory environment (slot A committed); both files hold it."""
    from appliance.slots.loader import EkCodec
    from appliance.slots.state import BootState
    from appliance.slots.uboot import EnvFiles
    from appliance.slots.ubootenv import render_copy

    return render_copy(EkCodec().encode(BootState()), EnvFiles().size, redundant=True, flag=0)


def boot_files(loaded: LoadedRecipe) -> dict[str, bytes]:
    """Files of the boot partition besides boot.scr: the env copies and board.firmware."""
    from appliance.slots.uboot import EnvFiles

    env = initial_env()
    files = {f"/{name}": env for name in EnvFiles().names}
    for firmware in loaded.recipe.board.firmware:
        path = loaded.resolve(firmware)
        files[f"/{path.name}"] = path.read_bytes()
    return files


def slot_files() -> dict[str, bytes]:
    """Files the slot needs for this loader: fw_env.config naming the two copies."""
    from appliance.slots.uboot import EnvFiles

    return {FW_ENV_CONFIG: EnvFiles().fw_env_config(BOOT_MOUNT).encode()}


def boot_key(loaded: LoadedRecipe) -> dict[str, object]:
    """What decides the boot partition's bytes (besides size, volume id and epoch)."""
    version = run_tool(["mkimage", "-V"]).strip()
    files = {"boot.cmd": boot_cmd(loaded).encode(), **boot_files(loaded)}
    return {
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())},
        "mkimage": version,
    }


def build_tree(loaded: LoadedRecipe, dest: Path, epoch: int) -> Path:
    """Fill ``dest`` with boot.scr (compiled), boot.cmd (its source) and the env copies."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-uboot-") as tmp:
        cmd = Path(tmp) / "boot.cmd"
        cmd.write_text(boot_cmd(loaded))
        run_tool(
            ["mkimage", "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
             "-n", "edgekiln A/B", "-d", str(cmd), str(dest / "boot.scr")],
            env={"SOURCE_DATE_EPOCH": str(epoch)},
        )  # fmt: skip
        (dest / "boot.cmd").write_bytes(cmd.read_bytes())
    for rel, data in boot_files(loaded).items():
        (dest / rel.lstrip("/")).write_bytes(data)
    return dest
