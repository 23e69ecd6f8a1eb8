"""A small model package whose classes mean something: which colour dominates a patch.

A random untrained network predicts one class for everything (and loses most of its agreement
under INT8, as the issue measured); this one is built by hand so FP32 has margins, the way a
trained model has: conv 3->8 (3x3) + ReLU + conv 8->8 + ReLU + global pool + Gemm.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

LABELS = ["red", "green", "blue", "grey"]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def colour_classifier_onnx(seed: int = 0) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    # Conv1: channels 0-2 pass R,G,B through (averaging 3x3), 3-7 small random features.
    w1 = rng.normal(0, 0.05, (8, 3, 3, 3)).astype(np.float32)
    for c in range(3):
        w1[c] = 0.0
        w1[c, c] = 1.0 / 9
    b1 = np.full(8, 2.5, np.float32)  # keep normalised colours (about -2..2.6) positive
    w2 = rng.normal(0, 0.05, (8, 8, 1, 1)).astype(np.float32)
    for c in range(3):
        w2[c, c, 0, 0] = 1.0
    fw = np.zeros((4, 8), np.float32)
    fw[:3, :3] = np.array([[2, -1, -1], [-1, 2, -1], [-1, -1, 2]], np.float32)
    fb = np.array([0, 0, 0, 0.8], np.float32)
    init = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(fw, "fw"),
        numpy_helper.from_array(fb, "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def colour_images(n: int, seed: int) -> np.ndarray:
    """Noisy patches, each dominated by red, green, blue, or none (grey)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 140, (n, 1, 1, 1))
    img = np.broadcast_to(base, (n, 32, 32, 3)).astype(np.int32).copy()
    kind = np.arange(n) % 4
    for i, k in enumerate(kind):
        if k < 3:
            img[i, ..., k] += rng.integers(70, 110)
    img += rng.integers(-25, 26, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_colour_package(root: Path, count: int = 128, calib: int = 32) -> Path:
    """A complete package: model.onnx, reference.npz (labels = FP32 predictions), calibration."""
    import onnxruntime as ort

    root.mkdir(parents=True, exist_ok=True)
    data = colour_classifier_onnx()
    (root / "model.onnx").write_bytes(data)
    images = colour_images(count * 3, 1)
    x = ((images / 255 - np.array(MEAN)) / np.array(STD)).astype(np.float32).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": x})[0]
    # Keep confident images only (top-1 beats top-2 by a clear margin), as a trained model's
    # held-out set mostly is: INT8 noise must not decide the label of a coin-flip image.
    top2 = np.sort(logits, axis=1)[:, -2:]
    keep = np.flatnonzero(top2[:, 1] - top2[:, 0] > 0.3)[:count]
    images, labels = images[keep], logits[keep].argmax(1).astype(np.int64)
    count = len(images)
    np.savez_compressed(root / "reference.npz", images=images, labels=labels)
    np.savez_compressed(root / "calibration.npz", images=colour_images(calib, 2))
    manifest = {
        "format": 1,
        "name": "colour",
        "version": "1.0.0",
        "task": "classification",
        "labels": LABELS,
        "files": [
            {
                "path": "model.onnx",
                "format": "onnx",
                "precision": "fp32",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
        "input": {
            "name": "input",
            "shape": [1, 3, 32, 32],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "resize": "stretch",
            "scale": 1 / 255,
            "mean": MEAN,
            "std": STD,
        },
        "output": {"name": "logits", "kind": "logits"},
        "budget_ms": {
            "capture": 30.0,
            "pre": 5.0,
            "infer": 20.0,
            "post": 2.0,
            "publish": 5.0,
            "total": 60.0,
        },
        "reference": {"split": "reference.npz", "count": count, "top1": 1.0, "histogram": {}},
        "calibration": {"split": "calibration.npz", "count": calib},
        "provenance": {"tool": "tests/models/fixtures.py"},
    }
    (root / "model.json").write_text(json.dumps(manifest, indent=2))
    return root


REFERENCE_MODELS = Path(__file__).resolve().parents[2] / "recipes" / "models"


def copy_reference(name: str, tmp_path: Path) -> Path:
    """A copy of the committed reference package ``name`` (skip if it was never generated)."""
    src = REFERENCE_MODELS / name
    if not (src / "model.json").exists():
        pytest.skip(f"{src} is not generated (tools/make_reference_model.py)")
    return Path(shutil.copytree(src, tmp_path / name))
