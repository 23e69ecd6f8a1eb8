"""edgekiln builder: turns a recipe into a signed, A/B-partitioned device image."""

from __future__ import annotations

__version__ = "0.1.0"
