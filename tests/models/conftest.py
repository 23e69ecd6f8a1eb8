"""Fixtures for the model optimisation tests: a real ONNX package with meaningful classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.models.fixtures import make_colour_package


@pytest.fixture(scope="session")
def colour_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colour_package(tmp_path_factory.mktemp("models") / "colour")


@pytest.fixture(scope="session")
def constant_calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deliberately bad calibration split: 32 identical mid-grey images."""
    p = tmp_path_factory.mktemp("calib") / "constant.npz"
    np.savez_compressed(p, images=np.full((32, 32, 32, 3), 128, np.uint8))
    return p


@pytest.fixture(scope="session")
def mobilenet_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileNetV2-style package with 120 classes (not the reference models' architecture)."""
    from tests.models.mobilenet_like import make_mobilenet_package

    return make_mobilenet_package(tmp_path_factory.mktemp("models") / "mobilenet-like")
