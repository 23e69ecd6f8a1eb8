"""The boot partition's content per loader: GRUB EFI (x86-64) here, U-Boot in :mod:`.uboot`.

The A/B protocol belongs to :mod:`appliance.slots.grub` (docs/decisions.md §3): this module
only builds the EFI binary with ``grub-mkimage`` (small and reproducible, unlike
grub-mkstandalone) from that module's ``GRUB_MODULES`` and embedded config, and writes its
rendered ``grub.cfg`` and initial grubenv (both copies) into the ESP tree.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from image.build import uboot
from image.build.fs import run_tool
from image.errors import BuildError
from image.recipe import LoadedRecipe, canonical_json

log = logging.getLogger(__name__)

ESP_LABEL = "EDGEKILN"  # FAT label the embedded config searches for (<= 11 characters)
GRUB_FORMATS = {"amd64": ("x86_64-efi", "BOOTX64.EFI")}


class BootError(BuildError):
    """The boot partition cannot be made for this target."""


def grub_files(loaded: LoadedRecipe) -> dict[str, bytes]:
    """Text files of the ESP (everything except the EFI binary): path -> bytes."""
    from appliance.slots import grub

    cfg = grub.render_grub_cfg(cmdline=loaded.recipe.kernel.cmdline)
    env = grub.initial_env()
    return {
        grub.GRUB_CFG_PATH: cfg.encode(),
        grub.ENV_PATH: env,
        grub.ENV_BACKUP_PATH: env,
    }


def embed_cfg() -> str:
    """The config embedded in the EFI image: find the ESP by label, run its grub.cfg."""
    from appliance.slots import grub

    return grub.render_embed_cfg(ESP_LABEL)


def grub_modules() -> tuple[str, ...]:
    """Modules built into the EFI image (owned by the slots module)."""
    from appliance.slots import grub

    return tuple(grub.GRUB_MODULES)


def slots_spec(loaded: LoadedRecipe) -> str:
    """How the device's agent finds its loader (appliance.slots.config ``SPEC``)."""
    return {"grub-efi": "grub:/boot/efi", "u-boot": "uboot:/etc/fw_env.config"}.get(
        loaded.recipe.target.loader, "nvbootctrl"
    )


def boot_key(loaded: LoadedRecipe) -> str:
    """Content key of the ESP: its files, the modules, the embedded config, GRUB's version."""
    self_check(loaded)
    if loaded.recipe.target.loader == "u-boot":
        inputs_uboot = {**uboot.boot_key(loaded), "label": ESP_LABEL}
        return hashlib.sha256(canonical_json(inputs_uboot)).hexdigest()[:32]
    version = run_tool(["grub-mkimage", "--version"]).strip()
    inputs = {
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in grub_files(loaded).items()},
        "modules": grub_modules(),
        "embed": embed_cfg(),
        "grub": version,
        "label": ESP_LABEL,
        "arch": loaded.recipe.target.arch,
    }
    return hashlib.sha256(canonical_json(inputs)).hexdigest()[:32]


#: loader -> the architectures whose boot partition this builder makes
BUILDABLE = {"grub-efi": tuple(GRUB_FORMATS), "u-boot": ("arm64",)}


def self_check(loaded: LoadedRecipe) -> None:
    """Refuse loaders this builder cannot make (L4T: no boot partition of ours; its recipe is
    checked by :func:`image.build.l4t.check_recipe`, from ``kiln build`` and ``l4t.build``)."""
    t = loaded.recipe.target
    if t.loader == "l4t":  # image.build.l4t: slot images for NVIDIA's flash tools, no ESP
        return
    if t.arch not in BUILDABLE.get(t.loader, ()):
        raise BootError(
            f"{loaded.path}: target.loader {t.loader!r} on {t.arch} cannot be built yet; "
            "this builder makes x86-64 GRUB EFI and arm64 U-Boot images"
        )
    if t.loader == "u-boot":
        uboot.check_board(loaded)


def slot_files(loaded: LoadedRecipe) -> dict[str, bytes]:
    """Files the loader needs inside each slot (path relative to / -> bytes)."""
    return uboot.slot_files() if loaded.recipe.target.loader == "u-boot" else {}


def build_esp_tree(loaded: LoadedRecipe, dest: Path, epoch: int = 0) -> Path:
    """Fill ``dest`` with the boot partition's files (GRUB: EFI/BOOT/BOOTX64.EFI, grub/grub.cfg,
    grub/grubenv and its backup; U-Boot: :func:`image.build.uboot.build_tree`)."""
    self_check(loaded)
    if loaded.recipe.target.loader == "u-boot":
        return uboot.build_tree(loaded, dest, epoch)
    fmt, efi_name = GRUB_FORMATS[loaded.recipe.target.arch]
    efi = dest / "EFI" / "BOOT" / efi_name
    efi.parent.mkdir(parents=True, exist_ok=True)
    from appliance.slots import grub

    with tempfile.TemporaryDirectory(prefix="kiln-grub-") as tmp:
        embed = Path(tmp) / "embed.cfg"
        embed.write_text(embed_cfg())
        run_tool(
            [
                "grub-mkimage", "-O", fmt, "-c", str(embed), "-p", grub.GRUB_DIR,
                "-o", str(efi), *grub_modules(),
            ]
        )  # fmt: skip
    for rel, data in grub_files(loaded).items():
        path = dest / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return dest
