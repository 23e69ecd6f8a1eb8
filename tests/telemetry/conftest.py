"""Fixtures for the telemetry tests: the inference tests' tiny model package."""

from __future__ import annotations

from tests.inference.conftest import tiny_package, tiny_package_src

__all__ = ["tiny_package", "tiny_package_src"]
