"""Which slot the running system booted from: ``edgekiln.slot=A|B`` on the kernel command line.

On a Jetson the slot is L4T's (UEFI picks it; our slot image is the same in both slots, so its
extlinux.conf cannot name it): when the command line has no ``edgekiln.slot=`` and the device's
loader is ``nvbootctrl`` (``$EDGEKILN_SLOTS``, or an ``nvbootctrl`` on PATH), the slot is
``nvbootctrl -t rootfs get-current-slot``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from appliance.slots.errors import BootedSlotUnknown
from appliance.slots.state import Slot, parse_slot

CMDLINE = Path("/proc/cmdline")


def booted_slot(cmdline: str | None = None) -> Slot:
    """The slot named by ``edgekiln.slot=`` (the loader scripts add it), else L4T's current one.

    L4T is asked only when the command line was read here (``cmdline`` is None).
    """
    text = CMDLINE.read_text() if cmdline is None else cmdline
    for word in text.split():
        key, _, value = word.partition("=")
        if key == "edgekiln.slot":
            slot = parse_slot(value)
            if slot is not None:
                return slot
    if cmdline is None and _l4t_device():
        from appliance.slots.nvbootctrl import NvBootCtrlLoader

        return NvBootCtrlLoader().current_slot()
    raise BootedSlotUnknown(
        f"no edgekiln.slot=A|B in the kernel command line ({text.strip()[:200]!r}); "
        "was this system booted by the edgekiln grub.cfg / boot.scr? On a development "
        "machine pass --booted A"
    )


def _l4t_device() -> bool:
    from appliance.slots.config import ENV_VAR

    spec = os.environ.get(ENV_VAR, "")
    if spec:
        return spec.partition(":")[0] == "nvbootctrl"
    return shutil.which("nvbootctrl") is not None
