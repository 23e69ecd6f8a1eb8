"""Check committed reference packages: digests, and the recorded accuracy re-measured.

Runs without torch (the repo's .venv): onnxruntime for ONNX files, ai_edge_litert for TFLite
files. Every recorded figure must be reproduced exactly: top-1 of each file and the prediction
histogram of the FP32 ONNX model on the package's own reference split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from refmodel import pack


class CheckError(Exception):
    """A package does not match what its model.json records."""


@dataclass(frozen=True)
class Row:
    """One checked model file."""

    package: str
    path: str
    format: str
    precision: str
    size: int
    recorded_top1: float
    measured_top1: float


def check_package(root: Path) -> list[Row]:
    """Verify one package directory; raise :class:`CheckError` naming the file and field."""
    where = root / "model.json"
    try:
        document: dict[str, Any] = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckError(f"{where}: cannot read: {exc}; regenerate the package") from None
    _check_listed_files(root, document)
    labels = tuple(document["labels"])
    reference = document["reference"]
    images, truth = pack.read_npz(root / reference["split"])
    if len(images) != reference["count"]:
        raise CheckError(
            f"{where}: reference.count is {reference['count']}, split has {len(images)}"
        )
    calibration, _ = pack.read_npz(root / document["calibration"]["split"])
    if len(calibration) != document["calibration"]["count"]:
        raise CheckError(f"{where}: calibration.count does not match {len(calibration)} images")

    rows = []
    for index, entry in enumerate(document["files"]):
        path = root / entry["path"]
        if entry["format"] == "onnx":
            predictions = pack.onnx_predict(path, images)
            recorded = float(entry.get("top1", reference["top1"]))
            if entry["precision"] == "fp32":
                _expect(where, "reference.top1", reference["top1"], pack.top1(predictions, truth))
                measured_hist = pack.histogram(predictions, labels)
                _expect(where, "reference.histogram", reference["histogram"], measured_hist)
        elif entry["format"] == "tflite":
            predictions = tflite_predict(path, images, document, entry)
            recorded = float(entry["top1"])
        else:
            continue
        measured = pack.top1(predictions, truth)
        _expect(where, f"files[{index}].top1", recorded, measured)
        rows.append(
            Row(
                document["name"],
                entry["path"],
                entry["format"],
                entry["precision"],
                path.stat().st_size,
                recorded,
                measured,
            )
        )
    return rows


def _check_listed_files(root: Path, document: dict[str, Any]) -> None:
    """Every listed file exists and has its recorded digest; no model file is unlisted."""
    where = root / "model.json"
    listed = set()
    for index, entry in enumerate(document["files"]):
        path = root / entry["path"]
        listed.add(entry["path"])
        if not path.is_file():
            raise CheckError(f"{where}: files[{index}].path: {path} is missing")
        digest = pack.sha256_file(path)
        if digest != entry["sha256"]:
            raise CheckError(
                f"{path}: sha256 {digest} differs from files[{index}].sha256 {entry['sha256']}"
            )
    extra = sorted(
        p.name for p in root.iterdir() if p.suffix in (".onnx", ".tflite") and p.name not in listed
    )
    if extra:
        raise CheckError(f"{where}: files: {extra} are in the package but not listed")


def _expect(where: Path, field: str, recorded: Any, measured: Any) -> None:
    if recorded != measured:
        raise CheckError(f"{where}: {field}: recorded {recorded}, measured {measured}")


def tflite_predict(
    path: Path, images: np.ndarray, document: dict[str, Any], entry: dict[str, Any]
) -> np.ndarray:
    """Class predictions of a TFLite classifier (NHWC input, float or quantised) with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    x = pack.normalise_nchw(images).transpose(0, 2, 3, 1)  # the float input, NHWC
    quant = entry.get("quantization")
    if quant is not None:
        q = np.rint(x / quant["input_scale"] + quant["input_zero_point"])
        info = np.iinfo(np.dtype(quant["input_dtype"]))
        x = np.clip(q, info.min, info.max).astype(quant["input_dtype"])
    predictions = []
    for k in range(len(x)):
        interpreter.set_tensor(detail["index"], x[k : k + 1].astype(detail["dtype"]))
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_tensor(output["index"])[0])))
    return np.asarray(predictions)


def format_table(rows: list[Row]) -> str:
    """A plain-text table of checked files."""
    header = ("package", "file", "format", "precision", "bytes", "recorded", "measured")
    lines = [header] + [
        (
            r.package,
            r.path,
            r.format,
            r.precision,
            str(r.size),
            f"{r.recorded_top1:.4f}",
            f"{r.measured_top1:.4f}",
        )
        for r in rows
    ]
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines
    )
