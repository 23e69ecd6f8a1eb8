"""Errors of ``kiln fleet``."""

from __future__ import annotations

from image.errors import BuildError


class FleetError(BuildError):
    """The fleet store or the broker cannot be used as asked (message says what and the fix)."""
