"""The committed reference model packages and the data-set generator behind them (no torch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
MODELS = REPO / "recipes" / "models"
PACKAGES = ["inspect-primary", "inspect-fallback"]

sys.path.insert(0, str(TOOLS))

from refmodel import dataset  # noqa: E402
from refmodel.check import CheckError, check_package  # noqa: E402


@pytest.mark.parametrize("name", PACKAGES)
def test_package_reproduces_its_recorded_figures(name: str) -> None:
    rows = check_package(MODELS / name)
    assert {r.path for r in rows} >= {"model.onnx"}
    minimum = 0.95 if name == "inspect-primary" else 0.80
    onnx = next(r for r in rows if r.path == "model.onnx")
    assert onnx.measured_top1 >= minimum
    # The TFLite ports (rebuilt from the ONNX weights): FP32 as good, INT8 within 2 pp.
    tflite = {r.path: r.measured_top1 for r in rows if r.format == "tflite"}
    if tflite:
        assert abs(tflite["model.tflite"] - onnx.measured_top1) <= 1 / 256
        assert tflite["model_int8.tflite"] >= onnx.measured_top1 - 0.02


def test_check_command_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, str(TOOLS / "make_reference_model.py"), "--check"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "inspect-primary" in out.stdout and "inspect-fallback" in out.stdout
    assert "ok:" in out.stdout


def test_packages_follow_the_format_and_stay_small() -> None:
    from appliance.inference.package import load_package

    for name in PACKAGES:
        pkg = load_package(MODELS / name)
        m = pkg.manifest
        assert m.labels == list(dataset.LABELS)
        assert m.input.shape == [1, 3, 96, 96] and m.input.layout == "NCHW"
        assert m.reference is not None and m.reference.count == 256
        assert abs(sum(m.reference.histogram.values()) - 1.0) < 1e-5
        for f in m.files:
            pkg.read_verified(f)
        # 256 + 32 noisy 96x96 images deflate to ~20 KB each: the splits dominate the size.
        size = sum(p.stat().st_size for p in (MODELS / name).iterdir())
        assert size < 7 * 1024 * 1024, f"{name} is {size} bytes"
        text = (MODELS / name / "model.json").read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_onnx_input_and_output_names() -> None:
    import onnx

    for name in PACKAGES:
        model = onnx.load(str(MODELS / name / "model.onnx"))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        (inp,) = model.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert inp.name == "input" and dims[1:] == [3, 96, 96] and isinstance(dims[0], str)
        assert [o.name for o in model.graph.output] == ["logits"]


def _damaged(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(MODELS / name, root)
    return root


def test_check_refuses_a_changed_model_file(tmp_path: Path) -> None:
    root = _damaged(tmp_path, "inspect-fallback")
    data = bytearray((root / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (root / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CheckError, match=r"model\.onnx: sha256"):
        check_package(root)


def test_check_refuses_a_wrong_recorded_accuracy(tmp_path: Path) -> None:
    root = _damaged(tmp_path, "inspect-fallback")
    document = json.loads((root / "model.json").read_text())
    document["reference"]["top1"] = round(document["reference"]["top1"] - 1 / 256, 6)
    (root / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckError, match=r"reference\.top1"):
        check_package(root)


def test_check_refuses_a_wrong_histogram(tmp_path: Path) -> None:
    root = _damaged(tmp_path, "inspect-fallback")
    document = json.loads((root / "model.json").read_text())
    hist = document["reference"]["histogram"]
    hist["ok"], hist["crack"] = hist["crack"], round(hist["ok"] + 0.5, 6)
    (root / "model.json").write_text(json.dumps(document))
    with pytest.raises(CheckError, match=r"reference\.histogram"):
        check_package(root)


def test_generator_is_deterministic_and_seed_dependent() -> None:
    for index in (0, 1, 2, 3, 77):
        a = dataset.render(1234, "reference", index)
        b = dataset.render(1234, "reference", index)
        assert a.dtype == np.uint8 and a.shape == (96, 96, 3)
        assert a.tobytes() == b.tobytes()
        assert a.tobytes() != dataset.render(1235, "reference", index).tobytes()
        assert a.tobytes() != dataset.render(1234, "calibration", index).tobytes()
    images, labels = dataset.make_split(1234, "reference", 8)
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert images[5].tobytes() == dataset.render(1234, "reference", 5).tobytes()


def test_generator_reproduces_the_committed_reference_split() -> None:
    import cv2

    document = json.loads((MODELS / "inspect-primary" / "model.json").read_text())
    versions = document["provenance"]["versions"]
    if (versions["opencv"], versions["numpy"]) != (cv2.__version__, np.__version__):
        pytest.skip(f"made with opencv/numpy {versions}; bit-exact only with the same versions")
    with np.load(MODELS / "inspect-primary" / "reference.npz", allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    seed = document["provenance"]["seed"]
    for index in (0, 1, 2, 3, 131, 255):
        assert dataset.render(seed, "reference", index).tobytes() == images[index].tobytes()
        assert labels[index] == dataset.label_of(index)
