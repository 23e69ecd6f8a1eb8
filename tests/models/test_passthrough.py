"""Real third-party .tflite models (mediapipe 0.10.14) through the packaging path, unchanged.

No silent re-quantisation: the LiteRT/Edge TPU targets ship the package's .tflite files
byte-for-byte (say what tool is missing for INT8 / Edge TPU), and the ONNX path refuses a
package whose ONNX model is already INT8.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.backends import get_backend
from appliance.inference.package import load_package
from image.errors import BuildError
from image.model.optimise import TABLE_FILE, optimise
from tests.inference.fixtures import tflite_package
from tests.inference.mediapipe import tflite_models

MODELS = ["face_detection_short_range", "hand_landmark_lite", "selfie_segmentation"]


def _digests(root: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.iterdir()
        if p.name != TABLE_FILE
    }


def _run(root: Path, x: np.ndarray) -> list[np.ndarray]:
    model = get_backend("litert").load(load_package(root))
    try:
        return model.run(x)
    finally:
        model.close()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", MODELS)
def test_mediapipe_passes_through_unchanged(name: str, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    src = tflite_models()[name]
    _, h, w, _ = Interpreter(model_path=str(src)).get_input_details()[0]["shape"]
    pkg = tflite_package(tmp_path / "in", src, int(h), int(w), labels=["x"])
    res = optimise(pkg, "coral-usb-arm64", tmp_path / "out")
    assert _digests(tmp_path / "out") == _digests(pkg)
    notes = " ".join(res.notes)
    assert "edgetpu_compiler is needed to make it and is not on PATH" in notes
    table = json.loads((tmp_path / "out" / TABLE_FILE).read_text())
    assert table["runtime"] == "litert" and table["selected"] == "model.tflite"
    x = np.random.default_rng(0).uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    before, after = _run(pkg, x), _run(tmp_path / "out", x)
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_int8_onnx_parent_is_refused_not_requantised(colour_pkg: Path, tmp_path: Path) -> None:
    int8 = tmp_path / "int8"
    optimise(colour_pkg, "onnxruntime", int8, select="int8", timing_rounds=1)
    before = _digests(int8)
    with pytest.raises(BuildError, match=r"is int8, not fp32; optimise the FP32 parent"):
        optimise(int8, "onnxruntime", tmp_path / "again")
    assert _digests(int8) == before and not (tmp_path / "again").exists()
    shutil.rmtree(int8)
