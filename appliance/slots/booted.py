"""Which slot the running system booted from: ``edgekiln.slot=A|B`` on the kernel command line."""

from __future__ import annotations

from pathlib import Path

from appliance.slots.errors import BootedSlotUnknown
from appliance.slots.state import Slot, parse_slot

CMDLINE = Path("/proc/cmdline")


def booted_slot(cmdline: str | None = None) -> Slot:
    """The slot named by ``edgekiln.slot=`` (the loader scripts add it)."""
    text = CMDLINE.read_text() if cmdline is None else cmdline
    for word in text.split():
        key, _, value = word.partition("=")
        if key == "edgekiln.slot":
            slot = parse_slot(value)
            if slot is not None:
                return slot
    raise BootedSlotUnknown(
        f"no edgekiln.slot=A|B in the kernel command line ({text.strip()[:200]!r}); "
        "was this system booted by the edgekiln grub.cfg / boot.scr? On a development "
        "machine pass --booted A"
    )
