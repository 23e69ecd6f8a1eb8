"""Errors of the supervisor and the health gate."""

from __future__ import annotations

from appliance.errors import ApplianceError


class SupervisorError(ApplianceError):
    """Base of supervisor errors."""


class HealthCheckError(SupervisorError):
    """The health check could not run at all (as opposed to running and failing)."""
