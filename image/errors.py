"""The root of the builder's exception hierarchy."""

from __future__ import annotations


class BuildError(Exception):
    """Base of every error the builder raises on purpose; the message names file, field and fix."""

    exit_code: int = 1
