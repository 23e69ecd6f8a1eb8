"""Errors of the A/B slot layer: state transitions and boot-loader environments."""

from __future__ import annotations

from appliance.errors import ApplianceError


class SlotError(ApplianceError):
    """Base of every slot-layer error."""


class InvalidTransition(SlotError):
    """A slot operation that the state machine forbids (e.g. writing the committed slot)."""


class EnvFormatError(SlotError):
    """A boot-loader environment could not be parsed or does not fit its fixed size."""


class LoaderError(SlotError):
    """A boot-loader tool or environment file could not be read or written."""


class BootedSlotUnknown(SlotError):
    """The running system could not tell which slot it booted from."""


class BelowFloorError(SlotError):
    """A slot would boot or be committed below the anti-rollback floor (or its level is unknown)."""
