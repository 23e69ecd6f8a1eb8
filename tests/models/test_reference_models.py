"""Acceptance on the committed reference packages (recipes/models/inspect-*).

INT8 for onnxruntime and OpenVINO passes the gate on the reference split; constant calibration
images fail it with both figures; a package's existing .tflite files pass through unchanged.
Private copies: the packages may be regenerated while the tests run.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.package import load_package
from appliance.inference.selftest import run_selftest
from image.model.optimise import GateError, optimise

REPO = Path(__file__).resolve().parents[2]
NAMES = ["inspect-primary", "inspect-fallback"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=NAMES)
def ref(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = REPO / "recipes" / "models" / request.param
    if not (src / "model.json").exists():
        pytest.skip(f"{src} is not generated (tools/make_reference_model.py)")
    return Path(shutil.copytree(src, tmp_path_factory.mktemp("ref") / request.param))


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_int8_passes_gate(ref: Path, target: str, tmp_path: Path) -> None:
    res = optimise(ref, target, tmp_path / "out", select="int8", timing_rounds=1)
    best = res.variant(res.selected)
    assert best.precision == "int8" and best.passed and not best.error
    assert best.drop_pp <= 1.0
    qdq = [v for v in res.variants if v.name in ("int8", "int8-u8s8") and not v.error]
    assert qdq and all(v.size_bytes < res.variant("fp32").size_bytes / 2 for v in qdq)
    # Any CPU: an INT8 row the runtime refused (OpenVINO on AMX) is reported, not fatal.
    for v in res.variants:
        assert bool(v.error) == (v.p50_ms == 0.0), v
        assert not (v.error and v.passed), v
        if v.error:
            assert target in v.error
    report = run_selftest(tmp_path / "out", target, budget_factor=20.0)
    assert report.top1 >= report.min_top1, report.reasons


def test_constant_calibration_fails(ref: Path, tmp_path: Path) -> None:
    shape = load_package(ref).manifest.input.shape  # NCHW [1, 3, H, W]
    const = tmp_path / "const.npz"
    np.savez_compressed(const, images=np.full((32, shape[2], shape[3], 3), 128, np.uint8))
    with pytest.raises(GateError, match=r"fails the accuracy gate.*vs FP32 \d\.\d{4}"):
        optimise(ref, "onnxruntime", tmp_path / "o", calibration=const, timing_rounds=1)


def test_tflite_files_pass_through_unchanged(ref: Path, tmp_path: Path) -> None:
    pkg = load_package(ref)
    tflites = [f for f in pkg.manifest.files if f.format == "tflite"]
    if not tflites:
        pytest.skip("the package has no .tflite files")
    res = optimise(ref, "coral-usb-arm64", tmp_path / "out")
    for f in tflites:
        a = hashlib.sha256((ref / f.path).read_bytes()).hexdigest()
        assert a == hashlib.sha256((tmp_path / "out" / f.path).read_bytes()).hexdigest()
    assert {v.file for v in res.variants} == {f.path for f in tflites}
