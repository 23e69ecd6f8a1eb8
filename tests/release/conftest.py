"""The update agent's channel fixtures (loopback server, TUF keys off the served tree)."""

from __future__ import annotations

from tests.ota.agent_kit import keys_home, www

__all__ = ["keys_home", "www"]
