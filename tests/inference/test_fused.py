"""Fused ONNX files on the device side: manifest rules, loading, pre/post, the pipeline.

The fused files are made by the real builder code (image/model/fuse.py) from real models (the
repo's reference package and the tiny test classifier) and run on the real runtimes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from appliance.inference.backends import get_backend, load_model
from appliance.inference.errors import PackageError
from appliance.inference.onnx_shape import onnx_input_dtype
from appliance.inference.package import load_package
from appliance.inference.pipeline import Pipeline, PipelineConfig
from appliance.inference.postprocess import Postprocessor
from appliance.inference.preprocess import FramePreprocessor, Preprocessor, resize
from appliance.inference.selftest import run_selftest
from appliance.inference.sink import JsonlSink
from appliance.inference.sources import ArraySource
from image.model.fuse import fuse_package
from tests.timing import NO_LATENCY_GATE

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "recipes" / "models" / "inspect-primary"
ONNX_BACKENDS = ("onnxruntime", "openvino", "opencv")


@pytest.fixture(scope="module")
def fused_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fused") / "inspect-primary"
    shutil.copytree(REFERENCE, root)
    fuse_package(root, color="BGR", top_k=4, check=16)
    return root


@pytest.fixture
def fused(fused_src: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    return Path(shutil.copytree(fused_src, tmp_path / "pkg"))


def _edit_files(root: Path, edit: dict[str, object], index: int) -> None:
    data = json.loads((root / "model.json").read_text())
    data["files"][index].update(edit)
    (root / "model.json").write_text(json.dumps(data))


def _top(post: Postprocessor, raw: list[np.ndarray]) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], post(raw)["top"])


def _fused_index(root: Path) -> int:
    files = json.loads((root / "model.json").read_text())["files"]
    return next(i for i, f in enumerate(files) if f.get("fused"))


# --- model.json rules ------------------------------------------------------------------------


def test_plain_selection_never_picks_the_fused_file(fused: Path) -> None:
    pkg = load_package(fused)
    plain = pkg.select_file(("onnx",))
    assert plain.path == "model.onnx" and plain.fused is None
    f = pkg.fused_for(plain)
    assert f is not None and f.path == "model.fused.onnx" and f.layout == "NHWC"
    assert f.fused is not None and (f.fused.of, f.fused.color, f.fused.top_k) == (
        "model.onnx",
        "BGR",
        4,
    )
    assert pkg.select_file(("onnx",), "model.fused.onnx") == f  # asked for by path: yes


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"layout": "NCHW"}, "files[1].layout"),
        ({"fused": {"of": "missing.onnx", "color": "BGR"}}, "files[1].fused.of"),
        ({"fused": {"of": "model.tflite", "color": "BGR"}}, "files[1].fused.of"),
        ({"fused": {"of": "model.onnx", "color": "YUV"}}, "files[1]"),
        ({"fused": {"of": "model.onnx", "color": "BGR", "top_k": -1}}, "fused.top_k"),
        ({"fused": {"of": "model.onnx", "color": "BGR", "x": 1}}, "files[1]"),
    ],
)
def test_bad_fused_entries_are_refused_naming_the_field(
    fused: Path, edit: dict[str, object], needle: str
) -> None:
    _edit_files(fused, edit, _fused_index(fused))
    with pytest.raises(PackageError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_package(fused)


def test_a_fused_tflite_file_is_refused(fused: Path) -> None:
    files = json.loads((fused / "model.json").read_text())["files"]
    i = next(i for i, f in enumerate(files) if f["path"] == "model.tflite")
    _edit_files(fused, {"fused": {"of": "model.onnx", "color": "BGR"}}, i)
    with pytest.raises(PackageError, match="only an onnx file can be fused"):
        load_package(fused)


def test_the_fused_file_takes_uint8_frames(fused: Path) -> None:
    assert onnx_input_dtype((fused / "model.fused.onnx").read_bytes(), "frame") == np.uint8
    assert onnx_input_dtype((fused / "model.onnx").read_bytes(), "input") == np.float32


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_load_model_prefers_the_fused_file_and_it_agrees_with_the_plain_one(
    fused: Path, backend: str
) -> None:
    pkg = load_package(fused)
    b = get_backend(backend)
    joined, plain = load_model(b, pkg, top=3), load_model(b, pkg, "model.onnx")
    assert joined.file.path == "model.fused.onnx" and plain.file.path == "model.onnx"
    pre_f, post_f = Preprocessor.for_model(joined), Postprocessor(joined, 3)
    pre_p, post_p = Preprocessor.for_model(plain), Postprocessor(plain, 3)
    assert isinstance(pre_f, FramePreprocessor)
    images, _ = pkg.load_reference()
    for rgb in images[:24]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # what a camera delivers
        want = _top(post_p, plain.run(pre_p(rgb, "RGB")[0]))
        got = _top(post_f, joined.run(pre_f(bgr, "BGR")[0]))
        assert [t["index"] for t in got] == [t["index"] for t in want]
        assert [t["label"] for t in got] == [t["label"] for t in want]
        assert np.allclose([t["score"] for t in got], [t["score"] for t in want], atol=2e-5)
        # An RGB frame into the BGR-fused file: reversed in Python, same answer.
        again = _top(post_f, joined.run(pre_f(rgb, "RGB")[0]))
        assert [t["index"] for t in again] == [t["index"] for t in want]
        assert post_f.best(joined.run(pre_f(bgr, "BGR")[0])) == want[0]["index"]
    joined.close()
    plain.close()


def test_a_fused_file_with_too_few_classes_is_skipped(fused: Path) -> None:
    ort = get_backend("onnxruntime")
    # The fixture keeps all 4 classes: enough for any top.
    assert load_model(ort, load_package(fused), top=9).file.path == "model.fused.onnx"
    fuse_package(fused, color="BGR", top_k=2, check=4)
    assert load_model(ort, load_package(fused), top=2).file.path == "model.fused.onnx"
    assert load_model(ort, load_package(fused), top=3).file.path == "model.onnx"


def test_a_damaged_fused_file_falls_back_to_the_plain_one(
    fused: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = bytearray((fused / "model.fused.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (fused / "model.fused.onnx").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        model = load_model(get_backend("onnxruntime"), load_package(fused), top=3)
    assert model.file.path == "model.onnx"
    assert "fused file model.fused.onnx not used" in caplog.text and "sha256" in caplog.text


def test_pipeline_raises_an_alert_for_a_damaged_fused_file_and_runs_the_plain_one(
    fused: Path, tmp_path: Path
) -> None:
    (fused / "model.fused.onnx").write_bytes(b"not onnx")  # bit rot on the slot
    images, _ = load_package(fused).load_reference()
    out = tmp_path / "r.jsonl"
    cfg = PipelineConfig(model=str(fused), source="mem", backends=["onnxruntime"])
    Pipeline(cfg, sink=JsonlSink(out), source=ArraySource("mem", images[:3], "RGB")).run()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    alerts = [r for r in records if r["type"] == "event" and r["alert"]]
    assert len(alerts) == 1 and alerts[0]["kind"] == "fallback"
    assert "model.fused.onnx not used" in alerts[0]["reason"] and "sha256" in alerts[0]["reason"]
    results = [r for r in records if r["type"] == "result"]
    assert [r["file"] for r in results] == ["model.onnx"] * 3
    assert not any(r["degraded"] for r in results)


def test_litert_never_loads_a_fused_file(fused: Path) -> None:
    model = load_model(get_backend("litert"), load_package(fused), top=3)
    assert model.file.path == "model.tflite"


def test_selftest_checks_the_file_the_pipeline_runs(fused: Path) -> None:
    report = run_selftest(fused, "onnxruntime", budget_factor=NO_LATENCY_GATE)
    assert report.file == "model.fused.onnx" and report.passed, report.reasons
    assert report.top1 == pytest.approx(load_package(fused).manifest.reference.top1)  # type: ignore[union-attr]
    plain = run_selftest(fused, "onnxruntime", file="model.onnx", budget_factor=NO_LATENCY_GATE)
    assert plain.file == "model.onnx" and plain.top1 == report.top1


# --- pre-processing of frames for a fused file ---------------------------------------------


def test_frame_preprocessor_passes_a_model_sized_frame_through_untouched() -> None:
    pre = FramePreprocessor(8, 6, "stretch", "BGR", reuse=True)
    frame = np.random.default_rng(0).integers(0, 256, (6, 8, 3), np.uint8)
    x, box = pre(frame, "BGR")
    assert x.shape == (1, 6, 8, 3) and np.shares_memory(x, frame)
    assert (box.scale_x, box.pad_x) == (1.0, 0.0)
    y, _ = pre(frame, "RGB")
    assert np.array_equal(y[0], frame[..., ::-1]) and y.flags.c_contiguous


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
def test_frame_preprocessor_resizes_like_the_plain_path(mode: str) -> None:
    pre = FramePreprocessor(32, 24, mode, "RGB", reuse=True)
    rng = np.random.default_rng(1)
    for shape in [(60, 40, 3), (60, 40, 3), (30, 90, 3)]:  # same size twice: reused border
        frame = rng.integers(0, 256, shape, np.uint8)
        want, want_box = resize(frame, 32, 24, mode)
        got, box = pre(frame, "RGB")
        assert np.array_equal(got[0], want) and box == want_box
        got_bgr, _ = pre(np.ascontiguousarray(frame[..., ::-1]), "BGR")
        assert np.array_equal(got_bgr[0], want)


# --- the pipeline ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_pipeline_runs_the_fused_file_with_the_plain_files_results(
    fused: Path, tmp_path: Path, backend: str
) -> None:
    images, _ = load_package(fused).load_reference()
    frames = np.ascontiguousarray(images[:20, :, :, ::-1])  # BGR, stretched from 96x96 as-is
    tops = {}
    for file in (None, "model.onnx"):
        cfg = PipelineConfig(model=str(fused), source="mem", backends=[backend], model_file=file)
        out = tmp_path / f"{file}.jsonl"
        pipe = Pipeline(cfg, sink=JsonlSink(out), source=ArraySource("mem", frames, "BGR"))
        pipe.run()
        records = [json.loads(line) for line in out.read_text().splitlines()]
        results = [r for r in records if r["type"] == "result"]
        assert len(results) == 20 and not any(r["degraded"] for r in results)
        assert {r["file"] for r in results} == {file or "model.fused.onnx"}
        tops[file] = [[t["index"] for t in r["top"]] for r in results]
    assert tops[None] == tops["model.onnx"]
