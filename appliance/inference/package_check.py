"""Meaning checks of model.json that msgspec's types cannot express, and the package's bounds.

A package is untrusted input (a technician's USB stick, a model owner's hand-written file):
every path is a plain relative path of printable UTF-8, every size has an upper bound, and
every error names the file and the field.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import msgspec

from appliance.inference.errors import PackageError

if TYPE_CHECKING:
    from appliance.inference.package import InputSpec, Manifest, ModelFile, Reference

MAX_MANIFEST_BYTES = 1 << 20
# Upper bounds: a package is untrusted input, and a device has little memory.
MAX_INPUT_SIDE = 4096  # pixels, height and width
MAX_BATCH = 16
MAX_INPUT_ELEMENTS = 1 << 24  # one input tensor: 64 MiB as float32
MAX_LABELS = 100_000
MAX_FILES = 64
MAX_MODEL_FILE_BYTES = 1 << 30  # one model file (or IR weights file) read into memory
MAX_SPLIT_BYTES = 1 << 30  # a split's arrays, uncompressed
MAX_SPLIT_IMAGES = 100_000


def _fail(where: Path, field: str, msg: str) -> PackageError:
    return PackageError(f"{where}: {field}: {msg}")


def _check_relpath(where: Path, field: str, value: str) -> None:
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise _fail(
            where,
            field,
            f"{value!r} contains the control character {bad!r} (NUL or another byte no file "
            "name should hold); name the file with printable characters",
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(
            where, field, f"{value!r} is not valid UTF-8 (a lone surrogate); rename the file"
        ) from None
    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value:
        raise _fail(where, field, f"{value!r} must be a relative path inside the package")


def _check_digest(where: Path, field: str, value: str | None) -> None:
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise _fail(where, field, "expected 64 lowercase hex digits")


def check_manifest(m: Manifest, where: Path) -> None:
    """Meaning checks msgspec's types cannot express."""
    _check_input(m.input, where)
    _check_files(m.files, where)
    _check_rest(m, where)


def _check_input(inp: InputSpec, where: Path) -> None:
    if len(inp.shape) != 4:
        raise _fail(where, "input.shape", f"expected 4 dims, got {len(inp.shape)}")
    if any(d <= 0 for d in inp.shape):
        raise _fail(where, "input.shape", f"every dim must be > 0, got {inp.shape}")
    n, h, w = (inp.shape[0], inp.shape[2], inp.shape[3])
    if inp.layout == "NHWC":
        h, w = inp.shape[1], inp.shape[2]
    if n > MAX_BATCH or h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE:
        raise _fail(
            where,
            "input.shape",
            f"{inp.shape}: batch at most {MAX_BATCH}, height and width at most "
            f"{MAX_INPUT_SIDE}; resize the model's input",
        )
    if n * h * w * 3 > MAX_INPUT_ELEMENTS:
        raise _fail(where, "input.shape", f"{inp.shape}: more than {MAX_INPUT_ELEMENTS} values")
    channels = inp.shape[1] if inp.layout == "NCHW" else inp.shape[3]
    if channels != 3:
        raise _fail(
            where,
            "input.shape",
            f"{inp.shape} has {channels} channels in layout {inp.layout}; expected 3",
        )
    for name, values in (("input.mean", inp.mean), ("input.std", inp.std)):
        if len(values) != 3:
            raise _fail(where, name, f"expected 3 values, got {len(values)}")
    if any(s == 0 for s in inp.std):
        raise _fail(where, "input.std", "values must be non-zero")


def _check_files(files: list[ModelFile], where: Path) -> None:
    if not files:
        raise _fail(where, "files", "at least one model file is required")
    if len(files) > MAX_FILES:
        raise _fail(where, "files", f"{len(files)} entries; at most {MAX_FILES}")
    seen: set[str] = set()
    for i, f in enumerate(files):
        _check_relpath(where, f"files[{i}].path", f.path)
        if f.path in seen:
            raise _fail(where, f"files[{i}].path", f"{f.path!r} is listed twice")
        seen.add(f.path)
        if not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
            raise _fail(where, f"files[{i}].sha256", "expected 64 lowercase hex digits")
        # Only TFLite files take integer input tensors; an INT8 ONNX or OpenVINO IR (QDQ,
        # NNCF FakeQuantize) takes float input, so it has no input quantisation to declare.
        quantised_tflite = f.format in ("tflite", "edgetpu-tflite")
        if f.precision in ("int8", "uint8") and quantised_tflite and f.quantization is None:
            raise _fail(where, f"files[{i}].quantization", "required for a quantised TFLite file")
        if f.quantization is not None and f.quantization.input_scale <= 0:
            raise _fail(where, f"files[{i}].quantization.input_scale", "must be > 0")
        _check_weights(where, i, f)
    for i, f in enumerate(files):
        if f.fused is not None:
            _check_fused(where, i, f, files)


def _check_fused(where: Path, i: int, f: ModelFile, files: list[ModelFile]) -> None:
    """A fused file is an NHWC ONNX file made from a plain ONNX file listed in the same package."""
    assert f.fused is not None
    if f.format != "onnx":
        raise _fail(where, f"files[{i}].fused", f"only an onnx file can be fused, not {f.format}")
    if f.layout != "NHWC":
        raise _fail(where, f"files[{i}].layout", "a fused file takes NHWC frames: set NHWC")
    _check_relpath(where, f"files[{i}].fused.of", f.fused.of)
    source = next((g for g in files if g.path == f.fused.of), None)
    if source is None or source.format != "onnx" or source.fused is not None:
        raise _fail(
            where,
            f"files[{i}].fused.of",
            f"{f.fused.of!r} is not a plain onnx file of this package",
        )
    if f.fused.top_k < 0:
        raise _fail(where, f"files[{i}].fused.top_k", "must be >= 0")


def _check_weights(where: Path, i: int, f: ModelFile) -> None:
    """An OpenVINO IR names its .bin and that file's sha256; other formats have no weights file."""
    if f.format != "openvino-ir":
        for name in ("weights", "weights_sha256"):
            if getattr(f, name) is not None:
                raise _fail(
                    where, f"files[{i}].{name}", f"only for openvino-ir files, not {f.format}"
                )
        return
    if not f.path.endswith(".xml"):
        raise _fail(where, f"files[{i}].path", f"{f.path!r}: an openvino-ir file is the .xml")
    if f.weights is not None:
        _check_relpath(where, f"files[{i}].weights", f.weights)
        if f.weights == f.path:
            raise _fail(where, f"files[{i}].weights", "must differ from path (the .bin file)")
    if f.weights_sha256 is None:
        raise _fail(
            where,
            f"files[{i}].weights_sha256",
            f"required for an openvino-ir file: the sha256 of {f.weights_path!r} "
            "(rebuild the package with kiln model optimise, or add the .bin's sha256)",
        )
    if not re.fullmatch(r"[0-9a-f]{64}", f.weights_sha256):
        raise _fail(where, f"files[{i}].weights_sha256", "expected 64 lowercase hex digits")


def _check_rest(m: Manifest, where: Path) -> None:
    if m.task == "classification" and not m.labels:
        raise _fail(where, "labels", "a classification model needs at least one label")
    if len(m.labels) > MAX_LABELS:
        raise _fail(where, "labels", f"{len(m.labels)} labels; at most {MAX_LABELS}")
    if m.task == "detection":
        if m.detection is None:
            raise _fail(where, "detection", "required when task is 'detection'")
        if m.detection.decoder == "ssd" and m.detection.anchors is None:
            raise _fail(where, "detection.anchors", "required for the ssd decoder")
    for i, f in enumerate(m.files):
        if f.fused is not None and f.fused.top_k and m.task != "classification":
            raise _fail(where, f"files[{i}].fused.top_k", "only a classifier has a top-k")
    for name, value in msgspec.structs.asdict(m.budget_ms).items():
        if value <= 0:
            raise _fail(where, f"budget_ms.{name}", f"must be > 0, got {value}")
    if m.reference is not None:
        _check_reference(m.reference, m.labels, where)
    if m.calibration is not None:
        _check_relpath(where, "calibration.split", m.calibration.split)
        _check_digest(where, "calibration.sha256", m.calibration.sha256)
        if not 0 < m.calibration.count <= MAX_SPLIT_IMAGES:
            raise _fail(where, "calibration.count", f"must be 1..{MAX_SPLIT_IMAGES}")


def _check_reference(ref: Reference, labels: list[str], where: Path) -> None:
    _check_relpath(where, "reference.split", ref.split)
    _check_digest(where, "reference.sha256", ref.sha256)
    if not 0.0 <= ref.top1 <= 1.0:
        raise _fail(where, "reference.top1", f"must be in [0, 1], got {ref.top1}")
    if not 0 < ref.count <= MAX_SPLIT_IMAGES:
        raise _fail(where, "reference.count", f"must be 1..{MAX_SPLIT_IMAGES}, got {ref.count}")
    unknown = sorted(set(ref.histogram) - set(labels))
    if unknown:
        raise _fail(
            where,
            "reference.histogram",
            f"keys {unknown[:5]} are not labels; the histogram's keys are labels from 'labels'",
        )
    bad = [k for k, v in ref.histogram.items() if not 0.0 <= v <= 1.0]
    if bad:
        raise _fail(where, "reference.histogram", f"{bad[:5]}: frequencies must be in [0, 1]")
