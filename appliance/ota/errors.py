"""Errors of the OTA installer."""

from __future__ import annotations

from appliance.errors import ApplianceError


class OtaError(ApplianceError):
    """Base of installer errors."""


class SourceError(OtaError):
    """The bundle source (file, stdin, URL) could not be opened or read."""


class SourceLengthError(SourceError):
    """A seekable bundle file is longer or shorter than its signed manifest describes."""


class TargetError(OtaError):
    """The inactive slot's device or image file is unusable (missing, too small)."""


class ReadBackError(OtaError):
    """The slot read back after writing does not match the signed image digest."""


class NoImageError(OtaError):
    """The bundle carries no full slot image."""
