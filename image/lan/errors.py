"""Errors of the laptop side of the site LAN."""

from __future__ import annotations

from image.errors import BuildError


class LanError(BuildError):
    """Base of the LAN client's errors."""


class PinMismatch(LanError):
    """The device's certificate is not the one pinned at pairing: nothing was sent."""


class DeviceRefused(LanError):
    """The device answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DeviceUnreachable(LanError):
    """The device could not be reached, or the connection broke."""


class UnknownDevice(LanError):
    """The device named is not paired (or not seen on the LAN)."""
