"""TensorRT target: symmetric INT8 QDQ + FP32 ONNX + a calibration cache, and the engine flags.

TensorRT itself is not installable here: the files are checked for what TensorRT's explicit
quantisation accepts (only Q/DQ, int8, zero-point 0), run on onnxruntime (CPU) and gated on the
real reference models; the device's engine builder and loader are driven with stand-ins for the
missing ``tensorrt`` and ``cudart`` modules (tests/inference/tensorrt_stand_in.py, the only
doubles, at the library edge).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from appliance.inference.backends.tensorrt import TensorRtBackend, builder_flags, engine_key
from appliance.inference.errors import BackendLoadError
from appliance.inference.package import load_package
from image.model.optimise import TABLE_FILE, optimise
from image.model.quantise import quantise_onnx_int8
from image.model.tensorrt import (
    CACHE_FILE,
    TensorRtQuantisationError,
    check_tensorrt_qdq,
    parse_calibration_cache,
)
from tests.inference.tensorrt_stand_in import TensorRtStandIn
from tests.models.fixtures import copy_reference


def assert_tensorrt_int8(path: Path) -> None:
    """Only Q/DQ quantisation, every zero-point an int8 0, every quantised weight int8."""
    graph = onnx.load(str(path)).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not {o for o in ops if o.startswith("QLinear") or o.endswith("Integer")}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = consts[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), (n.name, zp)
            if n.op_type == "DequantizeLinear" and n.input[0] in consts:
                assert consts[n.input[0]].dtype == np.int8  # weights; biases stay float


@pytest.mark.parametrize("name", ["inspect-primary", "inspect-fallback"])
def test_jetson_int8_is_symmetric_qdq_and_passes_the_gate(name: str, tmp_path: Path) -> None:
    pkg = copy_reference(name, tmp_path)
    out = tmp_path / "trt"
    res = optimise(pkg, "jetson-orin", out, timing_rounds=1)
    assert res.runtime == "tensorrt" and res.selected == "int8-trt"
    row = res.variant("int8-trt")
    # The same 1 pp gate the other targets' INT8 rows pass (measured: 0.39 pp on both).
    assert row.passed and row.drop_pp <= 1.0
    assert any("proxy" in n for n in res.notes)
    shipped = load_package(out)
    assert [(f.path, f.precision, f.allow_fp16) for f in shipped.manifest.files] == [
        ("model_int8.onnx", "int8", True),
        ("model.onnx", "fp32", True),
    ]
    assert_tensorrt_int8(out / "model_int8.onnx")
    assert check_tensorrt_qdq((out / "model_int8.onnx").read_bytes(), "x") > 0
    # It runs on onnxruntime (CPU) and agrees with the FP32 parent on the reference split.
    images, labels = shipped.load_reference()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    m = shipped.manifest.input
    x = ((images * m.scale - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    preds = np.concatenate([sess.run(None, {m.name: x[i : i + 1]})[0] for i in range(len(x))])
    assert (preds.argmax(1) == labels).mean() == pytest.approx(row.top1, abs=1e-9)
    # The device's engine: INT8 + FP16 for the INT8 file, FP16 for the FP32 one.
    f_int8, f_fp32 = shipped.manifest.files
    assert builder_flags(f_int8) == ("FP16", "INT8") and builder_flags(f_fp32) == ("FP16",)


def test_no_fp16_and_select_fp32_come_from_the_options(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-fallback", tmp_path)
    out = optimise(pkg, "jetson-orin", tmp_path / "a", timing_rounds=1, fp16=False)
    files = load_package(tmp_path / "a").manifest.files
    assert out.selected == "int8-trt" and [builder_flags(f) for f in files] == [("INT8",), ()]
    optimise(pkg, "jetson-orin", tmp_path / "b", timing_rounds=1, select="fp32")
    files = load_package(tmp_path / "b").manifest.files
    assert [(f.path, builder_flags(f)) for f in files] == [("model.onnx", ("FP16",))]


def test_onnxruntime_int8_files_are_refused_for_tensorrt(tmp_path: Path) -> None:
    """The S8S8 / U8S8 files the CPU targets ship have activation zero-points != 0."""
    pkg = load_package(copy_reference("inspect-fallback", tmp_path))
    s8 = quantise_onnx_int8(pkg, tmp_path / "s8.onnx")
    u8 = quantise_onnx_int8(pkg, tmp_path / "u8.onnx", unsigned_activations=True)
    with pytest.raises(TensorRtQuantisationError, match=r"is not 0 \(asymmetric\)"):
        check_tensorrt_qdq(s8.read_bytes(), str(s8))
    with pytest.raises(TensorRtQuantisationError, match=r"zero-point is uint8, not int8") as e:
        check_tensorrt_qdq(u8.read_bytes(), str(u8))
    assert str(u8) in str(e.value) and "--target jetson-orin" in str(e.value)
    fp32 = (tmp_path / "inspect-fallback" / "model.onnx").read_bytes()
    with pytest.raises(TensorRtQuantisationError, match="not quantised"):
        check_tensorrt_qdq(fp32, "model.onnx")
    with pytest.raises(TensorRtQuantisationError, match="not an ONNX model"):
        check_tensorrt_qdq(b"\x08\x07garbage", "junk.onnx")


def test_a_qoperator_file_is_refused(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from image.model.quantise import _Reader, preprocess_batches

    pkg = load_package(copy_reference("inspect-fallback", tmp_path))
    images = np.load(tmp_path / "inspect-fallback" / "calibration.npz")["images"][:4]
    reader: Any = _Reader("input", preprocess_batches(pkg, "model.onnx", images))
    reader.rewind = lambda: None
    out = tmp_path / "qop.onnx"
    quantize_static(
        str(tmp_path / "inspect-fallback" / "model.onnx"),
        str(out),
        reader,
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    with pytest.raises(TensorRtQuantisationError, match="QLinearConv is not Q/DQ"):
        check_tensorrt_qdq(out.read_bytes(), str(out))


def test_calibration_cache_scales_match_the_ranges(colour_pkg: Path, tmp_path: Path) -> None:
    out = tmp_path / "trt"
    optimise(colour_pkg, "jetson-orin", out, timing_rounds=1)
    header, scales = parse_calibration_cache((out / CACHE_FILE).read_bytes())
    assert header.startswith("TRT-") and header.endswith("-EntropyCalibration2")
    # The input's scale is absmax/127 of the normalised calibration images, computed here
    # independently of the builder: ((p/255 - mean)/std) over the calibration split.
    with np.load(colour_pkg / "calibration.npz") as z:
        imgs = z["images"].astype(np.float64) / 255
    norm = (imgs - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert scales["input"] == pytest.approx(np.abs(norm).max() / 127, rel=1e-5)
    graph = onnx.load(str(out / "model.onnx")).graph
    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    assert set(scales) <= names and "logits" in scales
    assert json.loads((out / TABLE_FILE).read_text())["runtime"] == "tensorrt"


def test_engine_build_sets_the_flags_of_the_shipped_file(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-fallback", tmp_path)
    optimise(pkg, "jetson-orin", tmp_path / "out", timing_rounds=1)
    shipped = load_package(tmp_path / "out")
    f = shipped.manifest.files[0]
    data = shipped.read_verified(f)
    trt = TensorRtStandIn()
    where = shipped.path_of(f)
    # The exported ONNX has a dynamic batch: without a shape there is no profile to build with.
    with pytest.raises(BackendLoadError, match="'input' has dynamic dimensions"):
        TensorRtBackend()._build(trt, None, data, where, builder_flags(f))
    trt.flags.clear()
    engine = TensorRtBackend()._build(trt, None, data, where, builder_flags(f), (1, 3, 96, 96))
    assert engine.endswith(data) and trt.flags == ["FP16", "INT8"] and trt.builds == 1
    # The cache key is today's without flags and changes with them.
    assert engine_key(f.sha256, "10.3", "Orin") != engine_key(f.sha256, "10.3", "Orin", ("INT8",))
    with pytest.raises(BackendLoadError, match="precision uint8"):
        builder_flags(type(f)(path="x.onnx", format="onnx", precision="uint8", sha256="0" * 64))


def test_the_jetson_recipe_ships_int8_with_fp16_and_fp16_false_turns_it_off(
    tmp_path: Path,
) -> None:
    """The build's model step for recipes/jetson-orin.toml, and the same with fp16 = false."""
    from image.model.stage import optimised_package
    from image.recipe import load_recipe

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    loaded = load_recipe(recipes / "jetson-orin.toml")
    assert loaded.recipe.models.optimise and loaded.recipe.models.fp16
    model = optimised_package(loaded, "fallback", tmp_path / "cache")
    files = load_package(model.path).manifest.files
    assert [(f.path, builder_flags(f)) for f in files] == [
        ("model_int8.onnx", ("FP16", "INT8")),
        ("model.onnx", ("FP16",)),
    ]
    assert model.summary["selected"] == "int8-trt" and model.summary["drop_pp"] <= 1.0
    # A recipe that extends it with fp16 = false: INT8 only, a different cache key.
    shutil.copytree(recipes, tmp_path / "recipes", ignore=shutil.ignore_patterns("models"))
    (tmp_path / "recipes" / "models").symlink_to(recipes / "models")
    (tmp_path / "recipes" / "no-fp16.toml").write_text(
        'extends = "jetson-orin.toml"\n[models]\nfp16 = false\n'
    )
    strict = load_recipe(tmp_path / "recipes" / "no-fp16.toml")
    other = optimised_package(strict, "fallback", tmp_path / "cache")
    assert other.key != model.key
    assert [builder_flags(f) for f in load_package(other.path).manifest.files] == [("INT8",), ()]


def test_the_device_loads_runs_and_caches_the_engine(tmp_path: Path) -> None:
    """TensorRtBackend._load end to end against stand-ins for tensorrt and cudart: the shipped
    INT8 file (dynamic batch in its ONNX) builds with INT8 + FP16 and a batch-1 profile, runs
    the reference split, is cached under its key, is reused, and a corrupt entry is dropped."""
    from appliance.inference.backends.base import BackendOptions
    from tests.inference.tensorrt_stand_in import CudartStandIn, TensorRtStandIn

    pkg = copy_reference("inspect-fallback", tmp_path)
    optimise(pkg, "jetson-orin", tmp_path / "out", timing_rounds=1)
    shipped = load_package(tmp_path / "out")
    trt, cuda = TensorRtStandIn(), CudartStandIn()
    backend = TensorRtBackend(lambda: (trt, cuda))
    opts = BackendOptions(cache_dir=str(tmp_path / "trt-cache"))
    model = backend.load(shipped, None, opts)
    assert model.file.path == "model_int8.onnx" and trt.builds == 1
    assert trt.flags == ["FP16", "INT8"] and model.input.shape == (1, 3, 96, 96)
    assert model.device == "GPU 0 Orin (stand-in) (tensorrt 10.3.0)"
    f = shipped.manifest.files[0]
    key = engine_key(f.sha256, "10.3.0", "Orin (stand-in)", ("FP16", "INT8"))
    assert [p.name for p in (tmp_path / "trt-cache").iterdir()] == [f"{key}.engine"]
    # The split through the device's buffers and copies gives the gate's figure.
    from appliance.inference.preprocess import Preprocessor

    pre = Preprocessor.for_model(model)
    images, labels = shipped.load_reference()
    preds = [int(model.run(pre(img, "RGB")[0])[0].argmax()) for img in images]
    table = json.loads((tmp_path / "out" / TABLE_FILE).read_text())
    row = next(v for v in table["variants"] if v["name"] == "int8-trt")
    assert np.mean(np.array(preds) == labels) == pytest.approx(row["top1"], abs=1e-9)
    backend.load(shipped, None, opts)
    assert trt.builds == 1  # from the cache
    (tmp_path / "trt-cache" / f"{key}.engine").write_bytes(b"torn write")
    with pytest.raises(BackendLoadError, match="cannot deserialize; removed, will rebuild"):
        backend.load(shipped, None, opts)
    backend.load(shipped, None, opts)
    assert trt.builds == 2
