"""image/model/fuse.py: fused ONNX files (pre-processing, softmax and top-k in the graph).

Real models throughout: the reference package (recipes/models/inspect-primary) and tiny ONNX
graphs made here with onnx.helper (an NHWC classifier, a detector, a two-input model). Fused and
plain files are compared on onnxruntime, OpenVINO and OpenCV through the appliance's own pre-
and post-processing, and once against a plain numpy + onnxruntime computation that shares no
code with the appliance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import image.model.fuse as model_fuse
from appliance.inference.backends import get_backend, load_model
from appliance.inference.package import Fused, load_package
from appliance.inference.postprocess import Postprocessor
from appliance.inference.preprocess import Preprocessor
from appliance.inference.selftest import run_selftest
from image.model.cli import model as model_cli
from image.model.fuse import FusedFile, FuseError, fuse_onnx, fuse_package
from tests.timing import NO_LATENCY_GATE

REPO = Path(__file__).resolve().parents[2]
PRIMARY = REPO / "recipes" / "models" / "inspect-primary"
KILN = Path(sys.executable).parent / "kiln"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of a directory tree, by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_primary(dest: Path) -> Path:
    return Path(shutil.copytree(PRIMARY, dest))


def agree(root: Path, backend: str, fused_path: str, top: int, tol: float = 1e-4) -> int:
    """Run plain and fused file of ``root`` on every reference image; assert the same top-k."""
    pkg = load_package(root)
    fused_file = next(f for f in pkg.manifest.files if f.path == fused_path)
    assert fused_file.fused is not None
    color = fused_file.fused.color
    be = get_backend(backend)
    plain, fused = be.load(pkg, fused_file.fused.of), be.load(pkg, fused_path)
    try:
        pre_p, post_p = Preprocessor.for_model(plain), Postprocessor(plain, top)
        pre_f, post_f = Preprocessor.for_model(fused), Postprocessor(fused, top)
        images, _ = pkg.load_reference()
        for i, rgb in enumerate(images):
            frame = np.ascontiguousarray(rgb[..., ::-1]) if color == "BGR" else rgb
            want: list[Any] = post_p(plain.run(pre_p(rgb, "RGB")[0]))["top"]  # type: ignore[assignment]
            got: list[Any] = post_f(fused.run(pre_f(frame, color)[0]))["top"]  # type: ignore[assignment]
            assert [t["index"] for t in got] == [t["index"] for t in want], (backend, i)
            for x, y in zip(want, got, strict=True):
                assert abs(x["score"] - y["score"]) <= tol, (backend, i, want, got)
        return len(images)
    finally:
        plain.close()
        fused.close()


# --- the reference package ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["BGR", "RGB"])
def fused_ref(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, list[FusedFile]]:
    color = str(request.param)
    root = copy_primary(tmp_path_factory.mktemp(f"ref-{color}") / "pkg")
    return root, color, fuse_package(root, color=color)


def test_fused_file_is_listed_after_its_source_and_validates(
    fused_ref: tuple[Path, str, list[FusedFile]],
) -> None:
    import onnx

    root, color, res = fused_ref
    data = (root / "model.fused.onnx").read_bytes()
    assert res == [FusedFile("model.onnx", "model.fused.onnx", len(data), 64, color, 4)]
    pkg = load_package(root)
    paths = [f.path for f in pkg.manifest.files]
    assert paths == ["model.onnx", "model.fused.onnx", "model.tflite", "model_int8.tflite"]
    plain = pkg.manifest.files[0]
    fused = pkg.fused_for(plain)
    assert fused is not None and fused.path == "model.fused.onnx"
    # Four labels: the top-k cannot keep more than four classes.
    assert fused.fused == Fused(of="model.onnx", color=color, top_k=4)  # type: ignore[arg-type]
    assert (fused.layout, fused.precision, fused.top1) == ("NHWC", "fp32", plain.top1)
    assert fused.sha256 == sha(data)
    assert pkg.select_file(("onnx",)) == plain  # never picked unless asked for by path
    graph = onnx.load_from_string(data).graph
    (inp,) = graph.input
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, inp.type.tensor_type.elem_type, dims) == ("frame", 2, [1, 96, 96, 3])
    assert [o.name for o in graph.output] == ["scores", "indices"]
    # What the pipeline loads on a fused back end is the fused file.
    for name in ("onnxruntime", "openvino", "opencv"):
        loaded = load_model(get_backend(name), pkg, top=3)
        assert loaded.file.path == "model.fused.onnx", name
        loaded.close()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "opencv"])
def test_fused_and_plain_agree_on_every_reference_image(
    fused_ref: tuple[Path, str, list[FusedFile]], backend: str
) -> None:
    root, _color, _ = fused_ref
    assert agree(root, backend, "model.fused.onnx", top=4) == 256


def test_fused_matches_numpy_preprocessing_without_appliance_code(
    fused_ref: tuple[Path, str, list[FusedFile]],
) -> None:
    """Independent of the appliance's pre/post code: numpy normalisation + a raw session."""
    import onnxruntime as ort

    root, color, _ = fused_ref
    with np.load(root / "reference.npz") as npz:
        images = npz["images"]
    opts = ["CPUExecutionProvider"]
    plain = ort.InferenceSession(str(root / "model.onnx"), providers=opts)
    fused = ort.InferenceSession(str(root / "model.fused.onnx"), providers=opts)
    x = ((images.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
    for i in range(0, len(images), 8):
        logits = plain.run(None, {"input": x[i : i + 1]})[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        frame = images[i : i + 1, :, :, ::-1] if color == "BGR" else images[i : i + 1]
        scores, indices = fused.run(None, {"frame": np.ascontiguousarray(frame)})
        assert indices[0].tolist() == np.argsort(-probs).tolist()
        np.testing.assert_allclose(scores[0], np.sort(probs)[::-1], atol=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "opencv"])
def test_selftest_passes_on_the_fused_file(
    fused_ref: tuple[Path, str, list[FusedFile]], backend: str
) -> None:
    root, _color, _ = fused_ref
    report = run_selftest(root, backend, budget_factor=NO_LATENCY_GATE)
    assert report.file == "model.fused.onnx"
    assert report.passed, report.reasons


def test_fusing_is_deterministic(tmp_path: Path) -> None:
    a, b = copy_primary(tmp_path / "a"), copy_primary(tmp_path / "b")
    fuse_package(a, check=0)
    fuse_package(b, check=0)
    assert snapshot(a) == snapshot(b)
    pkg = load_package(a)
    f = pkg.manifest.files[0]
    once = fuse_onnx(pkg.read_verified(f), pkg.manifest, f, "BGR", 5)
    assert sha(once) == sha(fuse_onnx(pkg.read_verified(f), pkg.manifest, f, "BGR", 5))
    assert sha(once) == sha((a / "model.fused.onnx").read_bytes())


def test_a_second_run_replaces_the_entry(tmp_path: Path) -> None:
    root = copy_primary(tmp_path / "pkg")
    fuse_package(root)
    first = snapshot(root)
    # Other options: one entry still, now RGB with two classes (checked with k = 2).
    (res,) = fuse_package(root, color="RGB", top_k=2)
    assert res.images_checked == 64
    pkg = load_package(root)
    assert [f.path for f in pkg.manifest.files].count("model.fused.onnx") == 1
    assert len(pkg.manifest.files) == 4
    assert pkg.manifest.files[1].fused == Fused(of="model.onnx", color="RGB", top_k=2)
    assert agree(root, "onnxruntime", "model.fused.onnx", top=2) == 256
    assert sorted(p.name for p in root.iterdir()) == sorted(first)
    # Back to the first options: byte for byte what the first run wrote.
    fuse_package(root)
    assert snapshot(root) == first


def test_pre_processing_only_keeps_the_logits(tmp_path: Path) -> None:
    root = copy_primary(tmp_path / "pkg")
    (res,) = fuse_package(root, top_k=0)
    assert res.images_checked == 64
    pkg = load_package(root)
    assert pkg.manifest.files[1].fused == Fused(of="model.onnx", color="BGR", top_k=0)
    assert agree(root, "onnxruntime", "model.fused.onnx", top=4) == 256


def _wrong_constants(real: Any) -> Any:
    """A real fuse, then the scale constant multiplied by 1.5: a valid but wrong graph."""

    def fuse(data: bytes, *args: Any) -> bytes:
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(real(data, *args))
        for init in model.graph.initializer:
            if init.name == model_fuse.PREFIX + "a":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        onnx.checker.check_model(model)
        return bytes(model.SerializeToString())

    return fuse


@pytest.mark.parametrize("earlier", [False, True], ids=["fresh", "over-an-earlier-fuse"])
def test_a_failed_check_leaves_the_package_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, earlier: bool
) -> None:
    root = copy_primary(tmp_path / "pkg")
    if earlier:
        fuse_package(root, color="RGB")
    before = snapshot(root)
    monkeypatch.setattr(model_fuse, "fuse_onnx", _wrong_constants(model_fuse.fuse_onnx))
    with pytest.raises(
        FuseError, match=r"model\.fused\.onnx on onnxruntime: reference image 0: (top|scores)"
    ):
        fuse_package(root)
    assert snapshot(root) == before
    load_package(root)


def test_a_package_without_onnx_is_refused(tmp_path: Path) -> None:
    root = copy_primary(tmp_path / "pkg")
    doc = json.loads((root / "model.json").read_text())
    doc["files"] = [f for f in doc["files"] if f["format"] != "onnx"]
    (root / "model.json").write_text(json.dumps(doc))
    (root / "model.onnx").unlink()
    before = snapshot(root)
    with pytest.raises(
        FuseError, match=r"no plain onnx file to fuse \(the package has \['tflite'\]"
    ):
        fuse_package(root)
    assert snapshot(root) == before


def test_the_check_runs_on_every_runtime_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = copy_primary(tmp_path / "pkg")
    (res,) = fuse_package(root, backends=("onnxruntime", "openvino", "opencv"))
    assert res.images_checked == 64
    before = snapshot(root)
    monkeypatch.setattr(model_fuse, "fuse_onnx", _wrong_constants(model_fuse.fuse_onnx))
    with pytest.raises(FuseError, match=r"model\.fused\.onnx on openvino: reference image 0"):
        fuse_package(root, backends=("openvino",))
    assert snapshot(root) == before


def test_unknown_files_and_bad_options_are_refused(tmp_path: Path) -> None:
    root = copy_primary(tmp_path / "pkg")
    with pytest.raises(FuseError, match=r"\['model.tflite'\] are not plain onnx files"):
        fuse_package(root, files=["model.tflite"])
    with pytest.raises(FuseError, match="color 'YUV'"):
        fuse_package(root, color="YUV")
    with pytest.raises(FuseError, match="must be >= 0"):
        fuse_package(root, top_k=-1)
    assert not (root / "model.fused.onnx").exists()


# --- tiny models of other shapes -----------------------------------------------------------------


def _package(
    root: Path,
    onnx_bytes: bytes,
    input_spec: dict[str, Any],
    task: str,
    labels: list[str],
    output_kind: str,
    images: np.ndarray,
    predictions: np.ndarray,
    **extra: Any,
) -> Path:
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(onnx_bytes)
    np.savez_compressed(root / "reference.npz", images=images, labels=predictions)
    doc = {
        "format": 1,
        "name": root.name,
        "version": "0.0.1",
        "task": task,
        "labels": labels,
        "files": [
            {"path": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": sha(onnx_bytes)}
        ],
        "input": {"name": "input", "dtype": "float32", **input_spec},
        "output": {"name": "out", "kind": output_kind},
        "budget_ms": dict(capture=30.0, pre=5.0, infer=20.0, post=2.0, publish=5.0, total=60.0),
        "reference": {"split": "reference.npz", "count": len(images), "top1": 1.0},
        **extra,
    }
    (root / "model.json").write_text(json.dumps(doc, indent=2))
    return root


def _graph(
    nodes: list[Any], inputs: list[Any], output: Any, init: list[Any], opset: int = 17
) -> bytes:
    import onnx
    from onnx import helper

    model = helper.make_model(
        helper.make_graph(nodes, "tiny", inputs, [output], init),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def nhwc_classifier(size: int = 16, classes: int = 4) -> bytes:
    """Input NHWC float [N, H, W, 3] (a TF-style export): Transpose, Conv, pool, Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 1.0, (classes, 8)).astype(np.float32), "fw"),
    ]
    nodes = [
        helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw"], ["out"], transB=1),
    ]
    float_t = TensorProto.FLOAT
    inp = helper.make_tensor_value_info("input", float_t, ["N", size, size, 3])
    return _graph(nodes, [inp], helper.make_tensor_value_info("out", float_t, ["N", classes]), init)


@pytest.mark.parametrize("color", ["BGR", "RGB"])
def test_an_nhwc_model_is_fused(tmp_path: Path, color: str) -> None:
    import onnx
    import onnxruntime as ort

    data = nhwc_classifier()
    images = np.random.default_rng(8).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    x = (images.astype(np.float32) / 255 - MEAN) / STD
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels = sess.run(None, {"input": x})[0].argmax(1).astype(np.int64)
    spec = {"shape": [1, 16, 16, 3], "layout": "NHWC", "color": "RGB", "scale": 1 / 255}
    spec |= {"mean": MEAN.tolist(), "std": STD.tolist()}
    root = _package(
        tmp_path / "nhwc", data, spec, "classification", ["a", "b", "c", "d"], "logits",
        images, labels,
    )  # fmt: skip
    (res,) = fuse_package(root, color=color, top_k=3)
    assert res.images_checked == 24
    graph = onnx.load(root / "model.fused.onnx").graph
    ours = [n.op_type for n in graph.node if n.output[0].startswith(model_fuse.PREFIX)]
    # Same colour order: no transpose, no gather; the other: to planes, reverse, back.
    want = (
        ["Cast", "Mul"] if color == "RGB" else ["Transpose", "Gather", "Transpose", "Cast", "Mul"]
    )
    assert ours[: len(want)] == want
    for backend in ("onnxruntime", "openvino"):
        assert agree(root, backend, "model.fused.onnx", top=3) == 24


def tiny_detector(size: int = 32, classes: int = 2) -> bytes:
    """NCHW input -> an 8x8/8 conv -> decoded [1, 16, 4 + classes] (cx, cy, w, h, scores)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(9)
    n = (size // 8) ** 2
    c = 4 + classes
    init = [
        numpy_helper.from_array(rng.normal(0, 0.05, (c, 3, 8, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([1, c, n], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], strides=[8, 8]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["out"], perm=[0, 2, 1]),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, n, c])
    return _graph(nodes, [inp], out, init)


def test_a_detector_gets_pre_processing_only(tmp_path: Path) -> None:
    import onnx

    images = np.random.default_rng(10).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    # A detector trained on BGR frames with its own normalisation, letterboxed.
    spec: dict[str, Any] = {"shape": [1, 3, 32, 32], "layout": "NCHW", "color": "BGR"}
    spec["resize"] = "letterbox"
    spec |= {"scale": 1.0, "mean": [104.0, 117.0, 123.0], "std": [58.0, 57.0, 57.5]}
    root = _package(
        tmp_path / "det", tiny_detector(), spec, "detection", ["cat", "dog"], "raw",
        images, np.zeros(len(images), np.int64),
        detection={"decoder": "yolo", "objectness": False, "score_threshold": 0.1},
    )  # fmt: skip
    (res,) = fuse_package(root, color="RGB", top_k=5)  # top_k is for classifiers only
    assert res.images_checked == 12
    pkg = load_package(root)
    assert pkg.manifest.files[1].fused == Fused(of="model.onnx", color="RGB", top_k=0)
    graph = onnx.load(root / "model.fused.onnx").graph
    assert [o.name for o in graph.output] == ["out"]
    for backend in ("onnxruntime", "openvino"):
        be = get_backend(backend)
        plain, fused = be.load(pkg, "model.onnx"), be.load(pkg, "model.fused.onnx")
        pre_p, pre_f = Preprocessor.for_model(plain), Preprocessor.for_model(fused)
        for rgb in images:
            want = plain.run(pre_p(rgb, "RGB")[0])[0]
            got = fused.run(pre_f(rgb, "RGB")[0])[0]
            assert got.shape == want.shape == (1, 16, 6)
            np.testing.assert_allclose(got, want, atol=model_fuse.OUTPUT_TOLERANCE)
        plain.close()
        fused.close()


def named_classifier(inp: str, out: str, opset: int, size: int = 8) -> bytes:
    """NCHW Conv, pool, Gemm with the given input/output tensor names and opset."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 1.0, (4, 6)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", [inp, "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], [out], transB=1),
    ]
    float_t = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(inp, float_t, [1, 3, size, size])]
    output = helper.make_tensor_value_info(out, float_t, [1, 4])
    return _graph(nodes, inputs, output, init, opset)


def _named_package(root: Path, inp: str, out: str, opset: int) -> Path:
    import onnxruntime as ort

    data = named_classifier(inp, out, opset)
    images = np.random.default_rng(12).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    x = ((images.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels = np.array([sess.run(None, {inp: x[i : i + 1]})[0].argmax() for i in range(16)])
    spec: dict[str, Any] = {"name": inp, "shape": [1, 3, 8, 8], "layout": "NCHW", "color": "RGB"}
    spec |= {"scale": 1 / 255, "mean": MEAN.tolist(), "std": STD.tolist()}
    return _package(
        root, data, spec, "classification", ["a", "b", "c", "d"], "logits", images, labels
    )


def test_tensors_named_like_the_fused_ones_are_renamed(tmp_path: Path) -> None:
    """A classifier whose input is "frame" and whose output is "scores"."""
    import onnx

    root = _named_package(tmp_path / "named", "frame", "scores", 17)
    (res,) = fuse_package(root, backends=("onnxruntime", "openvino"))
    assert (res.images_checked, res.top_k) == (16, 4)
    graph = onnx.load(root / "model.fused.onnx").graph
    assert [i.name for i in graph.input] == ["frame"]
    assert [o.name for o in graph.output] == ["scores", "indices"]
    assert agree(root, "onnxruntime", "model.fused.onnx", top=4) == 16


def test_an_old_opset_gets_no_top_k_but_may_fuse_pre_processing(tmp_path: Path) -> None:
    root = _named_package(tmp_path / "old", "input", "out", 10)
    before = snapshot(root)
    with pytest.raises(FuseError, match=r"model\.onnx: opset 10: a top-k in the graph needs"):
        fuse_package(root)
    assert snapshot(root) == before
    (res,) = fuse_package(root, top_k=0)
    assert (res.images_checked, res.top_k) == (16, 0)


def test_a_model_with_two_real_inputs_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    float_t = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input", float_t, [1, 3, 8, 8]),
        helper.make_tensor_value_info("mask", float_t, [1, 3, 8, 8]),
    ]
    nodes = [
        helper.make_node("Mul", ["input", "mask"], ["m"]),
        helper.make_node("GlobalAveragePool", ["m"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ]
    data = _graph(nodes, inputs, helper.make_tensor_value_info("out", float_t, [1, 3]), [])
    images = np.zeros((2, 8, 8, 3), np.uint8)
    spec = {"shape": [1, 3, 8, 8], "layout": "NCHW", "color": "RGB"}
    root = _package(
        tmp_path / "two", data, spec, "classification", ["a", "b", "c"], "logits",
        images, np.zeros(2, np.int64),
    )  # fmt: skip
    before = snapshot(root)
    with pytest.raises(
        FuseError, match=r"model\.onnx: fusing needs exactly one input, the model has 2"
    ):
        fuse_package(root)
    assert snapshot(root) == before


# --- kiln model fuse ----------------------------------------------------------------------------


def test_cli_fuses_and_prints_one_line_per_file(tmp_path: Path) -> None:
    root = copy_primary(tmp_path / "pkg")
    argv = ["fuse", str(root), "--color", "RGB", "--top-k", "3", "--check-on", "onnxruntime"]
    result = CliRunner().invoke(model_cli, [*argv, "--check-on", "openvino"])
    assert result.exit_code == 0, result.output
    size = (root / "model.fused.onnx").stat().st_size
    assert result.output == (
        f"{root}: model.onnx -> model.fused.onnx ({size} bytes, RGB frames, top-3, "
        "64 reference images checked on onnxruntime, openvino)\n"
    )
    assert load_package(root).manifest.files[1].fused == Fused("model.onnx", "RGB", 3)
    bad = CliRunner().invoke(model_cli, ["fuse", str(root), "--color", "YUV"])
    assert bad.exit_code == 2 and "'YUV' is not one of 'BGR', 'RGB'" in bad.output


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    root = copy_primary(tmp_path / "pkg")
    doc = json.loads((root / "model.json").read_text())
    doc["files"] = [f for f in doc["files"] if f["format"] != "onnx"]
    (root / "model.json").write_text(json.dumps(doc))
    proc = subprocess.run(
        [str(KILN), "model", "fuse", str(root)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {root / 'model.json'}: files: no plain onnx file")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
