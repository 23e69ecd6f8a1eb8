"""LiteRT FP32 and full-INT8 (uint8 in/out) files written without TensorFlow (tiny_tflite.py).

Checks the quantised-input path end to end: model.json's quantisation agrees with the
interpreter, our pre-processing gives the same uint8 tensor the bare interpreter is fed, outputs
are identical, and dequantised logits match the float model within the quantisation step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.backends import get_backend
from appliance.inference.errors import PackageError
from appliance.inference.package import load_package
from appliance.inference.postprocess import dequantize
from appliance.inference.preprocess import Preprocessor
from appliance.inference.selftest import run_selftest
from tests.inference.tiny_tflite import tflite_classifier_package, tiny_tflite_classifier

# The flatbuffers schema bindings used to write the files (pip "tflite"; dev dependency).
pytest.importorskip("tflite")


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    return tflite_classifier_package(tmp_path / "tflite")


@pytest.mark.parametrize("file", ["model.tflite", "model_int8.tflite"])
def test_selftest_on_fp32_and_int8(pkg: Path, file: str) -> None:
    r = run_selftest(pkg, "litert", budget_factor=1e6, file=file)
    assert r.file == file and r.passed, r.reasons
    if file == "model.tflite":
        assert r.top1 == 1.0  # labels are the float model's own predictions
    else:
        assert r.top1 == r.expected_top1 >= 0.85  # exactly what the bare interpreter gave


def test_int8_path_matches_bare_interpreter_and_float_model(pkg: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    t = tiny_tflite_classifier()
    model = get_backend("litert").load(load_package(pkg), "model_int8.tflite")
    assert model.input.dtype == np.uint8 and model.outputs[0].dtype == np.uint8
    pre = Preprocessor.for_model(model)
    bare = Interpreter(model_content=t.int8, num_threads=1)
    bare.allocate_tensors()
    images, _ = load_package(pkg).load_reference()
    for img in images[:16]:
        x, _ = pre(img[..., ::-1].copy(), "BGR")
        np.testing.assert_array_equal(x[0], img)  # scale 1/255, zero point 0: q == pixel
        bare.set_tensor(bare.get_input_details()[0]["index"], img[None])
        bare.invoke()
        want = bare.get_tensor(bare.get_output_details()[0]["index"])
        got = model.run(x)[0]
        assert np.array_equal(got, want)
        logits = dequantize(got, model.outputs[0])
        float_logits = t.weights @ (img.reshape(-1) / 255) + t.bias
        np.testing.assert_allclose(logits[0], float_logits, atol=3 * t.output_scale)


def test_quantisation_disagreeing_with_the_model_is_refused(pkg: Path) -> None:
    m = json.loads((pkg / "model.json").read_text())
    m["files"][1]["quantization"]["input_zero_point"] = 3
    (pkg / "model.json").write_text(json.dumps(m))
    with pytest.raises(
        PackageError, match=r"quantization: says uint8 scale .* zero_point 3, the model's input"
    ):
        get_backend("litert").load(load_package(pkg), "model_int8.tflite")


def test_nhwc_shape_mismatch_is_refused(pkg: Path) -> None:
    from appliance.inference.errors import ShapeMismatchError

    m = json.loads((pkg / "model.json").read_text())
    m["input"]["shape"] = [1, 16, 16, 3]
    (pkg / "model.json").write_text(json.dumps(m))
    with pytest.raises(
        ShapeMismatchError, match=r"says \[1, 16, 16, 3\] \(NHWC\) for model\.tflite"
    ):
        get_backend("litert").load(load_package(pkg), "model.tflite")
