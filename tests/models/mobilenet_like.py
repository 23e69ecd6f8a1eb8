"""A small MobileNetV2-style classifier package, built with the ``onnx`` helper, 120 classes.

Not the reference models' architecture: inverted residual blocks (1x1 expand, 3x3 depthwise,
1x1 project, ReLU6 as Clip, residual Add), 64x64 input, a 120-way Gemm head. Weights are
random (He init); the reference labels are the FP32 model's own predictions on images whose
top-1 beats top-2 by a margin, as a trained model's held-out set mostly is. The package is what
a model owner would write by hand following MODEL_PACKAGE.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = 120
SIZE = 64
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def mobilenet_like_onnx(classes: int = CLASSES, seed: int = 0) -> bytes:
    """Inverted residual blocks (t, c, n, s) at width ~0.25, random weights.

    The head is normalised like a folded BatchNorm: the pooled features of sample images are
    centred and scaled before the random 120-way Gemm, so predictions spread over the classes
    (a random deep net without it predicts one class for everything).
    """
    body = _graph(classes, seed, None)
    feats = _pooled_features(body)
    std = feats.std(0)
    # A floor on the scale: a near-constant feature must not be blown up into pure noise.
    return _graph(classes, seed, (feats.mean(0), np.maximum(std, np.median(std))))


def _pooled_features(model: bytes) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = normalise(blob_images(64, 7))
    return np.concatenate([sess.run(["f"], {"input": x[i : i + 1]})[0] for i in range(len(x))])


def _graph(classes: int, seed: int, stats: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    init: list[Any] = [
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6, np.float32), "six"),
    ]
    n = [0]

    def conv(x: str, cin: int, cout: int, k: int, s: int, group: int = 1, relu: bool = True) -> str:
        n[0] += 1
        i = n[0]
        w = rng.normal(0, np.sqrt(2 / (cin // group * k * k)), (cout, cin // group, k, k))
        init.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        init.append(numpy_helper.from_array(rng.normal(0, 0.1, cout).astype(np.float32), f"b{i}"))
        p = k // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], strides=[s, s], pads=[p] * 4, group=group
            )
        )
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Clip", [f"c{i}", "zero", "six"], [f"r{i}"]))
        return f"r{i}"

    x, cin = conv("input", 3, 8, 3, 2), 8
    for t, c, reps, s in [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 2, 2)]:
        for r in range(reps):
            stride = s if r == 0 else 1
            h = conv(x, cin, cin * t, 1, 1) if t != 1 else x
            h = conv(h, cin * t, cin * t, 3, stride, group=cin * t)
            h = conv(h, cin * t, c, 1, 1, relu=False)
            if stride == 1 and cin == c:
                n[0] += 1
                nodes.append(helper.make_node("Add", [x, h], [f"a{n[0]}"]))
                h = f"a{n[0]}"
            x, cin = h, c
    x = conv(x, cin, 96, 1, 1)
    fw = rng.normal(0, 1.0, (classes, 96))
    fb = np.zeros(classes)
    if stats is not None:
        mean, std = stats
        fw, fb = fw / std, -(fw / std) @ mean
    init += [
        numpy_helper.from_array(fw.astype(np.float32), "fw"),
        numpy_helper.from_array(fb.astype(np.float32), "fb"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mobilenet_v2_like_small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])]
        + ([] if stats else [helper.make_tensor_value_info("f", TensorProto.FLOAT, [1, 96])]),
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def blob_images(n: int, seed: int) -> np.ndarray:
    """Smooth colour patterns (a random 4x4 grid, upsampled, plus noise): varied features."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.float32)
    img = np.repeat(np.repeat(grid, SIZE // 4, axis=1), SIZE // 4, axis=2)
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> the float NCHW tensor model.json's input section describes."""
    x = (images / 255.0 - np.array(MEAN)) / np.array(STD)
    return x.astype(np.float32).transpose(0, 3, 1, 2)


def make_mobilenet_package(
    root: Path, count: int = 96, calib: int = 32, classes: int = CLASSES
) -> Path:
    """model.onnx + reference.npz (confident FP32 predictions) + calibration.npz + model.json."""
    import onnxruntime as ort

    root.mkdir(parents=True, exist_ok=True)
    data = mobilenet_like_onnx(classes)
    (root / "model.onnx").write_bytes(data)
    images = blob_images(count * 12, 1)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = normalise(images)
    logits = np.concatenate([sess.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    keep = np.sort(np.argsort(-margin)[:count])
    images, labels = images[keep], logits[keep].argmax(1).astype(np.int64)
    np.savez_compressed(root / "reference.npz", images=images, labels=labels)
    np.savez_compressed(root / "calibration.npz", images=blob_images(calib, 2))
    ref_digest = hashlib.sha256((root / "reference.npz").read_bytes()).hexdigest()
    manifest = {
        "format": 1,
        "name": "mobilenet-like",
        "version": "1.0.0",
        "task": "classification",
        "labels": [f"class_{i:03d}" for i in range(classes)],
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
            "shape": [1, 3, SIZE, SIZE],
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
            "infer": 50.0,
            "post": 2.0,
            "publish": 5.0,
            "total": 90.0,
        },
        "reference": {
            "split": "reference.npz",
            "count": len(images),
            "top1": 1.0,
            "sha256": ref_digest,
        },
        "calibration": {"split": "calibration.npz", "count": calib},
        "provenance": {"tool": "tests/models/mobilenet_like.py"},
    }
    (root / "model.json").write_text(json.dumps(manifest, indent=2))
    return root
