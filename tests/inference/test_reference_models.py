"""Acceptance on the real reference packages (recipes/models/inspect-*), made by tools/refmodel.

The reference model must reach its expected top-1 (within 0.5 pp) on onnxruntime, openvino and
opencv, and its TFLite FP32/INT8 files on LiteRT. Latency is reported, not asserted (wall clock
on a shared machine); the self-test's latency gate is covered with the budget factor elsewhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from appliance.inference.package import load_package
from appliance.inference.pipeline import Pipeline, PipelineConfig
from appliance.inference.selftest import TOLERANCE, run_selftest
from tests.timing import NO_LATENCY_GATE

MODELS = Path(__file__).resolve().parents[2] / "recipes" / "models"
PACKAGES = ["inspect-primary", "inspect-fallback"]


def _package(name: str) -> Path:
    root = MODELS / name
    if not (root / "model.json").exists():
        pytest.skip(f"{root} has not been generated (tools/refmodel)")
    return root


def _tflite_files(name: str) -> list[str]:
    root = MODELS / name
    if not (root / "model.json").exists():
        return []
    return [f.path for f in load_package(root).manifest.files if f.format == "tflite"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "opencv"])
@pytest.mark.parametrize("name", PACKAGES)
def test_reference_accuracy_on_onnx_backends(name: str, backend: str) -> None:
    r = run_selftest(_package(name), backend, budget_factor=NO_LATENCY_GATE)
    print(
        f"{name} {backend}: top1 {r.top1:.4f} (expected {r.expected_top1:.4f}) "
        f"infer p50 {r.infer_p50_ms:.2f} p95 {r.infer_p95_ms:.2f} ms"
    )
    assert r.images == load_package(MODELS / name).manifest.reference.count  # type: ignore[union-attr]
    assert r.top1 >= r.expected_top1 - TOLERANCE, r.reasons
    assert r.passed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "file"),
    [(n, f) for n in PACKAGES for f in _tflite_files(n)]
    or [
        pytest.param(
            "-", "-", marks=pytest.mark.skip(reason="no TFLite files in the reference packages yet")
        )
    ],
)
def test_reference_accuracy_on_litert(name: str, file: str) -> None:
    r = run_selftest(_package(name), "litert", budget_factor=NO_LATENCY_GATE, file=file)
    print(
        f"{name} litert {file}: top1 {r.top1:.4f} (expected {r.expected_top1:.4f}) "
        f"infer p50 {r.infer_p50_ms:.2f} p95 {r.infer_p95_ms:.2f} ms"
    )
    assert r.top1 >= r.expected_top1 - TOLERANCE, r.reasons


def test_health_gate_subset(tmp_path: Path) -> None:
    r = run_selftest(
        _package("inspect-primary"), "onnxruntime", limit=16, budget_factor=NO_LATENCY_GATE
    )
    assert r.images == 16 and r.passed, r.reasons


def test_damaged_primary_falls_back_to_the_reference_fallback_model(tmp_path: Path) -> None:
    primary, fallback = _package("inspect-primary"), _package("inspect-fallback")
    broken = tmp_path / "primary"
    shutil.copytree(primary, broken)
    onnx = broken / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])  # a torn update
    cfg = PipelineConfig(
        model=str(broken),
        fallback_model=str(fallback),
        source=f"npz:{primary}/reference.npz",
        backends=["onnxruntime", "opencv"],
        max_frames=32,
    )
    seen: list[dict[str, object]] = []
    pipe = Pipeline(cfg)
    pipe.run(on_frame=seen.append)
    chain = [e for e in pipe.events if e.kind != "budget_exceeded"]
    assert [e.kind for e in chain] == ["fallback", "fallback", "loaded"]
    assert all("sha256" in e.reason for e in chain[:2])
    assert len(seen) == 32 and {r["model"] for r in seen} == {load_package(fallback).name}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "file"),
    [("onnxruntime", None), ("openvino", None), ("opencv", None), ("litert", "model.tflite")],
)
def test_pipeline_results_equal_the_bare_model_on_the_numpy_formula(
    backend: str, file: str | None
) -> None:
    """The pipeline's fused pre-processing into a reused buffer changes no result."""
    from appliance.inference.backends import BackendOptions, get_backend
    from appliance.inference.postprocess import Postprocessor
    from appliance.inference.preprocess import Preprocessor

    root = _package("inspect-primary")
    package = load_package(root)
    if file is not None and file not in {f.path for f in package.manifest.files}:
        pytest.skip(f"{root} has no {file}")
    frames = 48
    cfg = PipelineConfig(
        model=str(root),
        source=f"npz:{root}/reference.npz",
        backends=[backend],
        model_file=file,
        max_frames=frames,
    )
    seen: list[dict[str, object]] = []
    Pipeline(cfg).run(on_frame=seen.append)
    assert len(seen) == frames and not any(r["degraded"] for r in seen)
    model = get_backend(backend).load(package, file, BackendOptions())
    pre, post = Preprocessor.for_model(model), Postprocessor(model)
    images, _ = package.load_reference()
    for record, image in zip(seen, images[:frames], strict=True):
        x, box = pre._numpy(image, "RGB")  # the plain numpy formula, a fresh tensor
        want: Any = post(model.run(x), box, (image.shape[1], image.shape[0]))["top"]
        got: Any = record["top"]
        assert [d["index"] for d in got] == [d["index"] for d in want]
        assert [d["score"] for d in got] == pytest.approx([d["score"] for d in want], abs=1e-4)
    model.close()
