"""Errors of the telemetry package."""

from __future__ import annotations

from appliance.errors import ApplianceError


class TelemetryError(ApplianceError):
    """Telemetry cannot run as configured (the message names the file or field and the fix)."""
