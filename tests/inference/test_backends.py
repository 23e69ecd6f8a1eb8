"""Back ends on real runtimes: same outputs, named errors for bad models, registry behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.backends import BackendOptions, available, get_backend
from appliance.inference.backends.tensorrt import cached_engine, engine_key, store_engine
from appliance.inference.errors import (
    BackendLoadError,
    BackendUnavailableError,
    DigestMismatchError,
    InferenceError,
    PackageError,
    ShapeMismatchError,
)
from appliance.inference.package import load_package
from appliance.inference.preprocess import Preprocessor
from tests.inference.fixtures import rewrite_manifest, sha256, tiny_classifier_onnx

ONNX_BACKENDS = ["onnxruntime", "openvino", "opencv"]


@pytest.mark.parametrize("name", ONNX_BACKENDS)
def test_onnx_backends_agree_with_onnxruntime(tiny_package: Path, name: str) -> None:
    pkg = load_package(tiny_package)
    images, _ = pkg.load_reference()
    ref = get_backend("onnxruntime").load(pkg)
    model = get_backend(name).load(pkg, options=BackendOptions(threads=2))
    assert model.backend == name and model.device
    pre = Preprocessor.for_model(model)
    for image in images:
        x, _ = pre(image)
        np.testing.assert_allclose(model.run(x)[0], ref.run(x)[0], rtol=1e-4, atol=1e-4)


def test_openvino_runs_f32_by_default(tiny_package: Path) -> None:
    model = get_backend("openvino").load(load_package(tiny_package))
    assert "precision f32" in model.device


@pytest.mark.parametrize("name", ONNX_BACKENDS)
def test_input_shape_disagreeing_with_model_json_is_refused(tiny_package: Path, name: str) -> None:
    rewrite_manifest(tiny_package, input__shape=[1, 3, 32, 32])
    with pytest.raises(
        ShapeMismatchError, match=r"input\.shape: says \[1, 3, 32, 32\].*is \[.*16, 16\]"
    ):
        get_backend(name).load(load_package(tiny_package))


@pytest.mark.parametrize("name", ONNX_BACKENDS)
def test_corrupt_model_with_matching_digest_gives_load_error(tiny_package: Path, name: str) -> None:
    bad = tiny_classifier_onnx(16)[:300]  # truncated protobuf
    (tiny_package / "model.onnx").write_bytes(bad)
    data = json.loads((tiny_package / "model.json").read_text())
    data["files"][0]["sha256"] = sha256(bad)
    (tiny_package / "model.json").write_text(json.dumps(data))
    with pytest.raises((BackendLoadError, PackageError)) as exc:
        get_backend(name).load(load_package(tiny_package))
    assert "model.onnx" in str(exc.value)


@pytest.mark.parametrize("name", ONNX_BACKENDS)
def test_tampered_model_is_refused_before_loading(tiny_package: Path, name: str) -> None:
    (tiny_package / "model.onnx").write_bytes(tiny_classifier_onnx(16, seed=7))
    with pytest.raises(DigestMismatchError):
        get_backend(name).load(load_package(tiny_package))


def test_tensorrt_is_reported_unavailable_here() -> None:
    status = {s.name: s for s in available()}
    assert status["onnxruntime"].ok
    assert not status["tensorrt"].ok and "tensorrt" in status["tensorrt"].detail
    with pytest.raises(BackendUnavailableError):
        get_backend("tensorrt").probe()


def test_unknown_backend_is_named() -> None:
    with pytest.raises(InferenceError, match="unknown back end 'cuda'"):
        get_backend("cuda")


def test_tensorrt_engine_cache_key_and_invalidation(tmp_path: Path) -> None:
    k1 = engine_key("a" * 64, "10.3.0", "Orin")
    assert k1 == engine_key("a" * 64, "10.3.0", "Orin")
    others = {
        engine_key("b" * 64, "10.3.0", "Orin"),
        engine_key("a" * 64, "10.4.0", "Orin"),
        engine_key("a" * 64, "10.3.0", "Orin Nano"),
    }
    assert k1 not in others and len(others) == 3
    assert cached_engine(tmp_path, k1) is None
    store_engine(tmp_path, k1, b"engine-1")
    assert cached_engine(tmp_path, k1) == b"engine-1"
    k2 = engine_key("a" * 64, "10.4.0", "Orin")  # JetPack upgrade: old engine is stale
    store_engine(tmp_path, k2, b"engine-2")
    assert cached_engine(tmp_path, k1) is None and cached_engine(tmp_path, k2) == b"engine-2"
    assert [p.name for p in tmp_path.iterdir()] == [f"{k2}.engine"]


def test_importing_the_runtime_loads_no_inference_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import appliance.inference.cli, appliance.inference.pipeline\n"
        "import appliance.inference.selftest\n"
        "import appliance.inference.backends.ort, appliance.inference.backends.litert\n"
        "import appliance.inference.backends.openvino, appliance.inference.backends.opencv\n"
        "import appliance.inference.backends.tensorrt\n"
        "heavy = ['onnxruntime', 'cv2', 'openvino', 'ai_edge_litert', 'tflite_runtime',\n"
        "         'tensorrt']\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
