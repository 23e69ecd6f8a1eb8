"""The root of the device runtime's exception hierarchy."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the device runtime raises on purpose.

    The message says what was wrong, where (file, field, offset) and what to do; CLIs print it
    in one or two lines and exit non-zero (see ``exit_code``).
    """

    exit_code: int = 1
