"""A/B slots: the state machine and the boot-loader back ends behind one interface.

* :mod:`appliance.slots.state` -- the pure state machine (committed, tried, bad, inactive).
* :mod:`appliance.slots.loader` -- the :class:`Loader` interface and the environment-driven
  back end shared by GRUB, U-Boot and the plain-file store.
* :mod:`appliance.slots.grub` -- grub.cfg template (rendered by the builder) + GRUB back end;
  :mod:`appliance.slots.grubenv` -- the 1024-byte GRUB environment block.
* :mod:`appliance.slots.filestore` -- plain-file back end for development.
"""

from __future__ import annotations

from appliance.slots.errors import (
    BootedSlotUnknown,
    EnvFormatError,
    InvalidTransition,
    LoaderError,
    SlotError,
)
from appliance.slots.loader import EnvLoader, Loader
from appliance.slots.state import SLOTS, BootState, Slot, other

__all__ = [
    "SLOTS",
    "BootState",
    "BootedSlotUnknown",
    "EnvFormatError",
    "EnvLoader",
    "InvalidTransition",
    "Loader",
    "LoaderError",
    "Slot",
    "SlotError",
    "other",
]
