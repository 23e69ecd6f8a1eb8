"""Fixtures for the update agent's tests: a loopback channel server, TUF keys off the tree."""

from __future__ import annotations

from .agent_kit import keys_home, www

__all__ = ["keys_home", "www"]
