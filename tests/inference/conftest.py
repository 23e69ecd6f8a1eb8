"""Shared fixtures for the inference tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.inference.fixtures import make_package


@pytest.fixture(scope="session")
def tiny_package_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture
def tiny_package(tiny_package_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny package that a test may damage."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_package_src, dst)
    return dst
