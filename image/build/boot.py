"""The boot partition's content per loader (x86-64: GRUB EFI + grub.cfg + grubenv).

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

from image.errors import BuildError
from image.build.fs import run_tool
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


def self_check(loaded: LoadedRecipe) -> None:
    """Refuse loaders this builder cannot make yet (arm64 U-Boot and L4T are a later issue)."""
    t = loaded.recipe.target
    if t.loader == "l4t":  # image.build.l4t: slot images for NVIDIA's flash tools, no ESP
        from image.build.l4t import check_recipe

        check_recipe(loaded)  # the user's L4T root: named and present
        return
    if t.loader != "grub-efi" or t.arch not in GRUB_FORMATS:
        raise BootError(
            f"{loaded.path}: target.loader {t.loader!r} on {t.arch} cannot be built yet; "
            "this builder makes x86-64 GRUB EFI images (generic-x86-64, intel-openvino)"
        )


def build_esp_tree(loaded: LoadedRecipe, dest: Path) -> Path:
    """Fill ``dest`` with EFI/BOOT/BOOTX64.EFI, grub/grub.cfg, grub/grubenv and its backup."""
    self_check(loaded)
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
