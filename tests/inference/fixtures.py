"""Real inputs for the inference tests: tiny ONNX models made with onnx.helper, packages."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

LABELS = ["ok", "scratch", "crack", "missing_hole"]


def tiny_classifier_onnx(
    size: int = 16, classes: int = 4, seed: int = 0, width: int = 8, extra_convs: int = 0
) -> bytes:
    """Conv 3->width (3x3) + ReLU [+ extra width->width convs] + global pool + Gemm; NCHW.

    ``extra_convs`` makes it deliberately slow (for the latest-frame test).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.5, (width, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (width,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (classes, width)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
    ]
    last = "r"
    for k in range(extra_convs):
        w = rng.normal(0, 0.1, (width, width, 3, 3)).astype(np.float32)
        init.append(numpy_helper.from_array(w, f"xw{k}"))
        nodes.append(helper.make_node("Conv", [last, f"xw{k}"], [f"x{k}"], pads=[1, 1, 1, 1]))
        last = f"x{k}"
    nodes += [
        helper.make_node("GlobalAveragePool", [last], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(
    files: list[dict[str, Any]], size: int = 16, count: int = 8, top1: float = 1.0
) -> dict[str, Any]:
    return {
        "format": 1,
        "name": "tiny",
        "version": "0.0.1",
        "task": "classification",
        "labels": LABELS,
        "files": files,
        "input": {
            "name": "input",
            "shape": [1, 3, size, size],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "resize": "stretch",
            "scale": 1 / 255,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
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
        "reference": {"split": "reference.npz", "count": count, "top1": top1, "histogram": {}},
        "provenance": {"tool": "tests/inference/fixtures.py"},
    }


def make_package(
    root: Path, size: int = 16, count: int = 8, seed: int = 0, width: int = 8, extra_convs: int = 0
) -> Path:
    """A complete tiny classification package whose labels are the model's own predictions."""
    import onnxruntime as ort

    root.mkdir(parents=True, exist_ok=True)
    onnx_bytes = tiny_classifier_onnx(size, seed=seed, width=width, extra_convs=extra_convs)
    (root / "model.onnx").write_bytes(onnx_bytes)
    rng = np.random.default_rng(seed + 1)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    labels = sess.run(None, {"input": x})[0].argmax(1).astype(np.int64)
    np.savez_compressed(root / "reference.npz", images=images, labels=labels)
    files = [
        {"path": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": sha256(onnx_bytes)}
    ]
    (root / "model.json").write_text(json.dumps(manifest(files, size, count), indent=2))
    return root


def rewrite_manifest(root: Path, **changes: Any) -> None:
    """Change top-level or dotted fields of a package's model.json (e.g. ``input.shape``)."""
    data = json.loads((root / "model.json").read_text())
    for key, value in changes.items():
        node = data
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[parts[-1]] = value
    (root / "model.json").write_text(json.dumps(data))


def tflite_package(
    root: Path,
    model: Path,
    height: int,
    width: int,
    task: str = "classification",
    detection: dict[str, Any] | None = None,
    labels: list[str] | None = None,
) -> Path:
    """Wrap a third-party float .tflite (NHWC, input in [-1, 1]) in a model package."""
    root.mkdir(parents=True, exist_ok=True)
    data = model.read_bytes()
    (root / "model.tflite").write_bytes(data)
    files = [
        {"path": "model.tflite", "format": "tflite", "precision": "fp32", "sha256": sha256(data)}
    ]
    m = manifest(files)
    m.pop("reference")
    m.update(
        name=model.stem,
        task=task,
        labels=labels or ["object"],
        output={"name": "out", "kind": "raw"},
    )
    m["input"].update(
        shape=[1, height, width, 3],
        layout="NHWC",
        scale=1 / 127.5,
        mean=[1.0] * 3,
        std=[1.0] * 3,
        resize="letterbox",
    )
    if detection is not None:
        m["detection"] = detection
    (root / "model.json").write_text(json.dumps(m, indent=2))
    return root


class RunningPipeline:
    """``Pipeline.run`` on a thread, collecting its frames and events; ``with`` stops it and
    joins the thread (30 s). After the block, ``error`` is whatever run() raised, or None."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.frames: list[dict[str, object]] = []
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work)

    def _work(self) -> None:
        try:
            self.pipe.run(self.stop, on_frame=self.frames.append, on_event=self.events.append)
        except BaseException as exc:  # the caller fails if run() ever raises
            self.error = exc

    def __enter__(self) -> RunningPipeline:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(30)

    @property
    def ended_cleanly(self) -> bool:
        return not self.thread.is_alive() and self.error is None
