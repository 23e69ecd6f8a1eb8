"""The optimiser's ``select`` choices a recipe can ask for, on the real reference package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.package import load_package
from image.errors import BuildError
from image.model.optimise import TABLE_FILE, GateError, optimise

PRIMARY = Path(__file__).resolve().parents[2] / "recipes" / "models" / "inspect-primary"


@pytest.fixture(scope="module")
def constant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibration split of identical grey frames (INT8 fails the gate with it)."""
    path = tmp_path_factory.mktemp("calib") / "grey.npz"
    np.savez_compressed(path, images=np.full((32, 96, 96, 3), 128, np.uint8))
    return path


def test_smallest_ships_the_fewest_bytes_that_pass(tmp_path: Path) -> None:
    res = optimise(PRIMARY, "generic-x86-64", tmp_path / "s", select="smallest", timing_rounds=1)
    chosen = res.variant(res.selected)
    passing = [v for v in res.variants if v.passed]
    assert chosen.passed and chosen.size_bytes == min(v.size_bytes for v in passing)
    assert chosen.precision == "int8" and res.size_ratio > 2.0
    first, *rest = load_package(tmp_path / "s").manifest.files
    assert first.path == chosen.file
    # The default generic runtime carries no OpenCV: no FP32 file for a back end it lacks
    # (with [runtime] extras = ["opencv"] it ships beside: tests/models/test_mobilenet_like.py).
    assert rest == []
    assert not (tmp_path / "s" / "model.onnx").exists()


def test_fp32_ships_the_parent_and_records_a_failed_gate(constant: Path, tmp_path: Path) -> None:
    with pytest.raises(GateError, match="fails the accuracy gate"):
        optimise(PRIMARY, "generic-x86-64", tmp_path / "f", calibration=constant, timing_rounds=1)
    res = optimise(
        PRIMARY,
        "generic-x86-64",
        tmp_path / "p",
        calibration=constant,
        select="fp32",
        timing_rounds=1,
    )
    assert res.selected == "fp32" and res.size_ratio == 1.0
    assert not res.variant("int8").passed and res.variant("int8").drop_pp > 1.0
    (f,) = load_package(tmp_path / "p").manifest.files
    assert (f.path, f.precision) == ("model.onnx", "fp32")
    assert (tmp_path / "p" / "model.onnx").read_bytes() == (PRIMARY / "model.onnx").read_bytes()
    table = json.loads((tmp_path / "p" / TABLE_FILE).read_text())
    assert [v["passed"] for v in table["variants"]] == [True, False, False, False]


def test_unknown_select_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="select: 'tiny' is not one of fastest, int8, smallest"):
        optimise(PRIMARY, "generic-x86-64", tmp_path / "x", select="tiny")
