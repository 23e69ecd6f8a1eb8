"""Which loader back end this device uses: ``--loader SPEC`` or ``$EDGEKILN_SLOTS``.

SPEC is ``grub:ESP_MOUNT`` (e.g. ``grub:/boot/efi``), ``uboot:FW_ENV_CONFIG``
(e.g. ``uboot:/etc/fw_env.config``), ``nvbootctrl[:RECORD]`` (L4T; RECORD is the committed-slot
record on data, default /data/edgekiln/slots-l4t.env) or ``file:PATH`` (development). Without
one, the device's files decide: a grubenv on /boot/efi, else /etc/fw_env.config, else an
``nvbootctrl`` on PATH.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.slots.errors import LoaderError
from appliance.slots.loader import Loader

ENV_VAR = "EDGEKILN_SLOTS"
LOCK_DIR = Path("/run/lock")
UBOOT_LOCK = Path("/var/lock/fw_printenv.lock")  # libubootenv's default lock file
DEFAULT_ESP = Path("/boot/efi")
DEFAULT_FW_ENV = Path("/etc/fw_env.config")


def open_loader(spec: str | None = None) -> Loader:
    """The loader named by ``spec`` (or ``$EDGEKILN_SLOTS``, or detected)."""
    spec = spec or os.environ.get(ENV_VAR) or _detect()
    kind, _, arg = spec.partition(":")
    if kind == "grub":
        from appliance.slots.grub import grub_loader

        loader = grub_loader(Path(arg) if arg else DEFAULT_ESP)
        if LOCK_DIR.is_dir():
            loader.lock_path = LOCK_DIR / "edgekiln-slots.lock"
        return loader
    if kind == "uboot":
        from appliance.slots.uboot import uboot_loader

        loader = uboot_loader(Path(arg) if arg else DEFAULT_FW_ENV)
        if UBOOT_LOCK.parent.is_dir():
            loader.lock_path = UBOOT_LOCK
        return loader
    if kind == "nvbootctrl":
        from appliance.slots.nvbootctrl import NvBootCtrlLoader

        return NvBootCtrlLoader(Path(arg)) if arg else NvBootCtrlLoader()
    if kind == "file" and arg:
        from appliance.slots.filestore import file_loader

        loader = file_loader(Path(arg))
        loader.lock_path = Path(arg + ".lock")
        return loader
    raise LoaderError(
        f"unknown slot loader {spec!r}: use grub:ESP_MOUNT, uboot:FW_ENV_CONFIG, "
        f"nvbootctrl[:RECORD] or file:PATH (--loader or ${ENV_VAR})"
    )


def _detect() -> str:
    if (DEFAULT_ESP / "grub" / "grubenv").exists():
        return f"grub:{DEFAULT_ESP}"
    if DEFAULT_FW_ENV.exists():
        return f"uboot:{DEFAULT_FW_ENV}"
    if shutil.which("nvbootctrl"):
        return "nvbootctrl"
    raise LoaderError(
        f"no boot loader found (no {DEFAULT_ESP}/grub/grubenv, no {DEFAULT_FW_ENV}, no "
        f"nvbootctrl); pass --loader or set ${ENV_VAR} (file:PATH on a development machine)"
    )
