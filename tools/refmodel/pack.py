"""Write model packages (format v1, appliance/inference/MODEL_PACKAGE.md) byte-reproducibly.

Needs only numpy (and onnxruntime for the figures): it runs in the torch venv while generating
and in the repo's .venv while checking.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SCALE = 1.0 / 255.0
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member time: the same arrays give the same bytes


def sha256_file(path: Path) -> str:
    """Lowercase hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays like ``numpy.savez_compressed`` but with fixed zip timestamps.

    ``savez_compressed`` stamps each member with the current time, so two runs would differ.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(
                buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a split: (images uint8 [N,H,W,3], labels int64 [N])."""
    with np.load(path, allow_pickle=False) as npz:
        return npz["images"], npz["labels"].astype(np.int64)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write JSON with sorted keys, 2-space indent and a final newline."""
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def normalise_nchw(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW per the package's input spec."""
    x: np.ndarray = images.astype(np.float32) * np.float32(SCALE)
    x = (x - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def histogram(predictions: np.ndarray, labels: tuple[str, ...]) -> dict[str, float]:
    """Class frequencies of ``predictions`` (rounded to 6 digits, as recorded in model.json)."""
    counts = np.bincount(predictions, minlength=len(labels))
    return {
        name: round(float(c) / len(predictions), 6) for name, c in zip(labels, counts, strict=True)
    }


def top1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy rounded to 6 digits (as recorded in model.json)."""
    return round(float((predictions == labels).mean()), 6)


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session with one intra-op thread (stable timing, stable results)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_predict(path: Path, images: np.ndarray) -> np.ndarray:
    """Class predictions of an ONNX classifier, one image per run (as on the device)."""
    session = onnx_session(path)
    x = normalise_nchw(images)
    out = [session.run(["logits"], {"input": x[k : k + 1]})[0][0] for k in range(len(x))]
    predictions: np.ndarray = np.asarray(out).argmax(axis=1)
    return predictions


def onnx_latency(path: Path, images: np.ndarray, runs: int = 300) -> tuple[float, float]:
    """(p50, p95) in ms of single-image onnxruntime inference on this CPU, after warm-up."""
    session = onnx_session(path)
    x = normalise_nchw(images)
    for k in range(20):
        session.run(["logits"], {"input": x[k % len(x) : k % len(x) + 1]})
    times = []
    for k in range(runs):
        sample = x[k % len(x) : k % len(x) + 1]
        started = time.perf_counter()
        session.run(["logits"], {"input": sample})
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def budget(infer_p95_ms: float) -> dict[str, float]:
    """Per-stage budget: inference gets 4x the measured p95 (at least 2 ms), rounded up to 0.5."""
    infer = max(2.0, float(np.ceil(infer_p95_ms * 4.0 * 2.0) / 2.0))
    stages = {"capture": 30.0, "pre": 5.0, "infer": infer, "post": 2.0, "publish": 5.0}
    stages["total"] = sum(stages.values())
    return stages


def manifest(
    name: str,
    labels: tuple[str, ...],
    files: list[dict[str, Any]],
    budget_ms: dict[str, float],
    reference: dict[str, Any],
    calibration_count: int,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The model.json document of a classification package with a float NCHW ONNX input."""
    return {
        "format": 1,
        "name": name,
        "version": "1.0.0",
        "task": "classification",
        "labels": list(labels),
        "files": files,
        "input": {
            "name": "input",
            "shape": [1, 3, 96, 96],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "resize": "stretch",
            "scale": SCALE,
            "mean": list(MEAN),
            "std": list(STD),
        },
        "output": {"name": "logits", "kind": "logits"},
        "budget_ms": budget_ms,
        "reference": reference,
        "calibration": {"split": "calibration.npz", "count": calibration_count},
        "provenance": provenance,
    }
