"""TensorRT target: INT8 QDQ + FP32 ONNX + a calibration cache whose scales match the ranges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from appliance.inference.package import load_package
from image.model.optimise import TABLE_FILE, optimise
from image.model.tensorrt import CACHE_FILE, parse_calibration_cache


def test_tensorrt_package_has_int8_fp32_and_cache(colour_pkg: Path, tmp_path: Path) -> None:
    out = tmp_path / "trt"
    res = optimise(colour_pkg, "jetson-orin", out, timing_rounds=1)
    assert res.runtime == "tensorrt" and res.selected in ("int8", "int8-u8s8")
    assert any("proxy" in n for n in res.notes)
    pkg = load_package(out)
    int8 = res.variant(res.selected).file
    assert [(f.path, f.precision) for f in pkg.manifest.files] == [
        (int8, "int8"),
        ("model.onnx", "fp32"),
    ]
    header, scales = parse_calibration_cache((out / CACHE_FILE).read_bytes())
    assert header.startswith("TRT-") and header.endswith("-EntropyCalibration2")
    # The input's scale is absmax/127 of the normalised calibration images, computed here
    # independently of the builder: ((p/255 - mean)/std) over the calibration split.
    with np.load(colour_pkg / "calibration.npz") as z:
        imgs = z["images"].astype(np.float64) / 255
    norm = (imgs - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert scales["input"] == pytest.approx(np.abs(norm).max() / 127, rel=1e-5)
    # Every activation named in the cache exists in the FP32 graph TensorRT will parse.
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    assert set(scales) <= names and "logits" in scales
    sess = ort.InferenceSession(str(out / int8), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input"
    assert json.loads((out / TABLE_FILE).read_text())["runtime"] == "tensorrt"
