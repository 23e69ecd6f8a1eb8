"""Errors of the LAN API (device side)."""

from __future__ import annotations

from appliance.errors import ApplianceError


class ApiError(ApplianceError):
    """Base class of the LAN API's errors."""


class CertificateError(ApiError):
    """The device certificate on data cannot be read or made."""


class TokenStoreError(ApiError):
    """The paired-token file on data is unreadable or malformed."""


class InterfaceError(ApiError):
    """The LAN interface named for the API has no IPv4 address (or does not exist)."""
