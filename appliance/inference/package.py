"""Model packages (format v1, see MODEL_PACKAGE.md): parse, validate and verify them.

model.json is untrusted input: it is decoded with msgspec into typed Structs, then checked for
meaning (shape versus layout, paths inside the package, sha256 of every file). Every error names
the file and the field, e.g. ``recipes/models/x/model.json: input.shape: expected 4 dims, got 3``.

Usage::

    pkg = load_package(Path("recipes/models/inspect-primary"))
    f = pkg.select_file(formats=("onnx",))
    data = pkg.read_verified(f)          # bytes whose sha256 was checked just now
    images, labels = pkg.load_reference()
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from appliance.inference.errors import DigestMismatchError, PackageError, ShapeMismatchError
from appliance.inference.package_check import (
    MAX_MANIFEST_BYTES,
    MAX_MODEL_FILE_BYTES,
    MAX_SPLIT_BYTES,
    check_manifest,
)

FileFormat = Literal["onnx", "tflite", "openvino-ir", "edgetpu-tflite"]
Layout = Literal["NCHW", "NHWC"]


class Quantization(msgspec.Struct, frozen=True):
    """Real scale/zero-point of a quantised file's input tensor (and optionally its output)."""

    input_scale: float
    input_zero_point: int
    input_dtype: Literal["uint8", "int8"]
    output_scale: float | None = None
    output_zero_point: int | None = None
    output_dtype: Literal["uint8", "int8"] | None = None


class Fused(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An ONNX file with the pre- (and for classification the top-k) processing in its graph.

    Its input is the frame itself: uint8 ``[1, H, W, 3]`` in colour order ``color``, already
    resized to ``input.shape``. The graph casts, reorders the channels to ``input.color``,
    normalises and transposes; with ``top_k`` a classifier's outputs are ``scores [1, K]``
    (softmax applied when ``output.kind`` is ``logits``; best first) and ``indices [1, K]``.
    """

    of: str  # the plain ONNX file of this package it was made from
    color: Literal["RGB", "BGR"]
    top_k: int = 0  # classification only: 0 keeps the source's outputs


class ModelFile(msgspec.Struct, frozen=True):
    """One model file of the package."""

    path: str
    format: FileFormat
    precision: Literal["fp32", "fp16", "int8", "uint8"]
    sha256: str
    quantization: Quantization | None = None
    # Optional: the layout of this file's input if it differs from input.layout (TFLite is NHWC).
    layout: Layout | None = None
    # Optional: top-1 this file reaches on the reference split (INT8 files may be lower).
    top1: float | None = None
    # OpenVINO IR only: the weights file beside the .xml (default: the same name with .bin) and
    # its sha256 (required: the .xml is only the graph, the .bin holds every weight).
    weights: str | None = None
    weights_sha256: str | None = None
    # A fused variant of another ONNX file (see Fused); never picked unless asked for.
    fused: Fused | None = None
    # TensorRT: the engine may run this file's float layers in FP16 (BuilderFlag.FP16).
    allow_fp16: bool = False

    @property
    def weights_path(self) -> str | None:
        """The IR's weights file, relative to the package (None for other formats)."""
        if self.format != "openvino-ir":
            return None
        if self.weights is not None:
            return self.weights
        return self.path[: -len(".xml")] + ".bin" if self.path.endswith(".xml") else None


class InputSpec(msgspec.Struct, frozen=True):
    """How a frame becomes the model's input tensor."""

    name: str
    shape: list[int]
    layout: Layout
    dtype: Literal["float32", "uint8", "int8"]
    color: Literal["RGB", "BGR"]
    resize: Literal["stretch", "letterbox"] = "stretch"
    scale: float = 1.0 / 255.0
    mean: list[float] = msgspec.field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[float] = msgspec.field(default_factory=lambda: [1.0, 1.0, 1.0])


class OutputSpec(msgspec.Struct, frozen=True):
    """What the model's (first) output means."""

    name: str
    kind: Literal["logits", "probabilities", "raw"] = "logits"


class Budget(msgspec.Struct, frozen=True):
    """Latency budget per pipeline stage, in milliseconds, on the target hardware."""

    capture: float
    pre: float
    infer: float
    post: float
    publish: float
    total: float


class Reference(msgspec.Struct, frozen=True):
    """The held-out reference split and the accuracy the FP32 model reaches on it."""

    split: str
    count: int
    top1: float
    histogram: dict[str, float] = msgspec.field(default_factory=dict)
    sha256: str | None = None  # the split file's digest: checked before it is read


class Calibration(msgspec.Struct, frozen=True):
    """The calibration split for INT8 post-training quantisation."""

    split: str
    count: int
    sha256: str | None = None


class SsdAnchors(msgspec.Struct, frozen=True):
    """SSD anchor generation options (MediaPipe SsdAnchorsCalculator semantics)."""

    num_layers: int
    min_scale: float
    max_scale: float
    strides: list[int]
    aspect_ratios: list[float] = msgspec.field(default_factory=lambda: [1.0])
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    interpolated_scale_aspect_ratio: float = 1.0
    fixed_anchor_size: bool = True
    reduce_boxes_in_lowest_layer: bool = False


class DetectionSpec(msgspec.Struct, frozen=True):
    """Detection decoding: SSD-style anchors or YOLO-style grids, then NMS."""

    decoder: Literal["ssd", "yolo"]
    score_threshold: float = 0.5
    iou_threshold: float = 0.45
    max_detections: int = 100
    # ssd
    anchors: SsdAnchors | None = None
    boxes_output: int = 0
    scores_output: int = 1
    box_scale: list[float] = msgspec.field(default_factory=list)  # x, y, w, h; empty: input size
    num_keypoints: int = 0
    reverse_output_order: bool = True
    sigmoid_score: bool = True
    score_clipping: float | None = None
    # yolo: raw grids per stride ([1, A*(5+C), H, W]) or an already-decoded [1, N, 4(+1)+C]
    strides: list[int] = msgspec.field(default_factory=list)
    grid_anchors: list[list[float]] = msgspec.field(default_factory=list)
    objectness: bool = True


class Manifest(msgspec.Struct, frozen=True):
    """model.json, format 1."""

    format: Literal[1]
    name: str
    version: str
    task: Literal["classification", "detection"]
    labels: list[str]
    files: list[ModelFile]
    input: InputSpec
    output: OutputSpec
    budget_ms: Budget
    reference: Reference | None = None
    calibration: Calibration | None = None
    detection: DetectionSpec | None = None
    provenance: dict[str, Any] = msgspec.field(default_factory=dict)


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _field_error(where: Path, exc: msgspec.ValidationError | msgspec.DecodeError) -> PackageError:
    """Rewrite msgspec's "Expected int, got str - at `$.a.b`" as "file: a.b: expected ..."."""
    m = _AT.match(str(exc))
    msg, path = (m.group("msg"), m.group("path")) if m else (str(exc), None)
    msg = msg[:1].lower() + msg[1:]
    field = path.lstrip(".") if path else "(document)"
    return PackageError(f"{where}: {field}: {msg.replace('`', '')}")


def parse_manifest(data: bytes, where: Path) -> Manifest:
    """Decode and check model.json bytes; raise :class:`PackageError` naming file and field."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise PackageError(f"{where}: file is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    try:
        manifest = msgspec.json.decode(data, type=Manifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _field_error(where, exc) from None
    check_manifest(manifest, where)
    return manifest


def check_labels(package: ModelPackage, f: ModelFile, outputs: list[np.ndarray]) -> None:
    """A classifier lists one label per class of its output (checked when a file loads).

    Checked for a classifier whose first output is scores ``[1, C]`` (``logits`` or
    ``probabilities``); a ``raw`` output (landmarks, heads) and a fused file with ``top_k``
    (K scores, not one per class) have nothing to compare.
    """
    m = package.manifest
    if m.task != "classification" or m.output.kind == "raw" or not outputs:
        return
    if f.fused is not None and f.fused.top_k:
        return
    shape = np.shape(outputs[0])
    if len(shape) != 2 or shape[0] != 1:
        return
    if shape[1] != len(m.labels):
        raise ShapeMismatchError(
            f"{package.manifest_path}: labels: {len(m.labels)} labels, but {f.path}'s output "
            f"{m.output.name!r} is {list(shape)}, {shape[1]} classes; list exactly one label "
            "per output class, in output order"
        )


def file_layout(m: Manifest, f: ModelFile) -> Layout:
    """The input layout of one file: its own ``layout``, NHWC for TFLite, else ``input.layout``."""
    if f.layout is not None:
        return f.layout
    if f.format in ("tflite", "edgetpu-tflite"):
        return "NHWC"
    return m.input.layout


def expected_shape(m: Manifest, f: ModelFile) -> tuple[int, int, int, int]:
    """model.json's input shape converted to the layout of file ``f``."""
    s = m.input.shape
    n, c, h, w = (s[0], s[1], s[2], s[3]) if m.input.layout == "NCHW" else (s[0], s[3], s[1], s[2])
    return (n, c, h, w) if file_layout(m, f) == "NCHW" else (n, h, w, c)


@dataclass(frozen=True)
class ModelPackage:
    """A parsed, checked model package directory."""

    root: Path
    manifest: Manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / "model.json"

    @property
    def name(self) -> str:
        return self.manifest.name

    def path_of(self, f: ModelFile) -> Path:
        return self.root / f.path

    def select_file(self, formats: tuple[str, ...], path: str | None = None) -> ModelFile:
        """The first file whose format is in ``formats`` (in that order), or the one at ``path``."""
        if path is not None:
            for f in self.manifest.files:
                if f.path == path or self.root / f.path == Path(path):
                    return f
            raise PackageError(f"{self.manifest_path}: files: no entry for {path!r}")
        for fmt in formats:
            for f in self.manifest.files:
                if f.format == fmt and f.fused is None:
                    return f
        have = sorted({f.format for f in self.manifest.files})
        raise PackageError(
            f"{self.manifest_path}: files: no file in format {'/'.join(formats)} "
            f"(package has {have})"
        )

    def fused_for(self, f: ModelFile) -> ModelFile | None:
        """The fused variant made from file ``f`` (see :class:`Fused`), if the package has one."""
        return next((g for g in self.manifest.files if g.fused and g.fused.of == f.path), None)

    def read_verified(self, f: ModelFile) -> bytes:
        """Read a model file and check its sha256; what was checked is what gets loaded.

        For an OpenVINO IR the weights file (.bin) is checked too (see :meth:`read_weights`).
        """
        data = self._read_checked(self.path_of(f), f.sha256, "sha256")
        if f.format == "openvino-ir":
            self.read_weights(f)
        return data

    def read_weights(self, f: ModelFile) -> bytes:
        """The verified bytes of an OpenVINO IR's weights file (``weights_sha256`` checked)."""
        rel = f.weights_path
        if rel is None or f.weights_sha256 is None:
            raise PackageError(f"{self.manifest_path}: files: {f.path!r} has no weights file")
        return self._read_checked(self.root / rel, f.weights_sha256, "weights_sha256")

    def _read_checked(
        self, p: Path, want: str, field: str, limit: int = MAX_MODEL_FILE_BYTES
    ) -> bytes:
        try:
            size = p.stat().st_size
            if size > limit:
                raise PackageError(
                    f"{p}: {size} bytes; the limit for a package file read into memory is "
                    f"{limit}; the file is not a model of this package or was replaced"
                )
            data = p.read_bytes()
        except OSError as exc:
            raise PackageError(
                f"{p}: cannot read model file ({exc.strerror}); reinstall the package"
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != want:
            raise DigestMismatchError(
                f"{p}: sha256 is {digest}, model.json says {want} ({field}); "
                "the file is corrupt or was replaced"
            )
        return data

    def load_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The reference split: images uint8 [N,H,W,3] RGB and labels int64 [N]."""
        ref = self.manifest.reference
        if ref is None:
            raise PackageError(f"{self.manifest_path}: reference: missing; the self-test needs it")
        p = self.root / ref.split
        if ref.sha256 is not None:
            data = self._read_checked(p, ref.sha256, "reference.sha256", MAX_SPLIT_BYTES)
            source: Path | io.BytesIO = io.BytesIO(data)
        else:
            source = p
        try:
            check_split_size(p, source)
            with np.load(source, allow_pickle=False) as npz:
                images, labels = npz["images"], npz["labels"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise PackageError(f"{p}: cannot read reference split: {exc}") from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise PackageError(
                f"{p}: images: expected uint8 [N,H,W,3], got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
            raise PackageError(
                f"{p}: labels: expected int [{len(images)}], got {labels.dtype} {labels.shape}"
            )
        if len(images) != ref.count:
            raise PackageError(
                f"{p}: holds {len(images)} images; model.json reference.count says {ref.count}"
            )
        return images, labels.astype(np.int64)


def check_split_size(p: Path, source: Path | io.BytesIO) -> None:
    """Refuse an .npz whose arrays would inflate beyond ``MAX_SPLIT_BYTES`` (before reading)."""
    with zipfile.ZipFile(source) as z:
        total = sum(i.file_size for i in z.infolist())
    if isinstance(source, io.BytesIO):
        source.seek(0)
    if total > MAX_SPLIT_BYTES:
        raise PackageError(
            f"{p}: its arrays hold {total} bytes uncompressed; the limit is {MAX_SPLIT_BYTES} "
            "(use fewer or smaller images)"
        )


def load_package(root: Path | str) -> ModelPackage:
    """Parse and check ``root/model.json``."""
    if "\0" in str(root):
        raise PackageError(
            f"{str(root)!r}: a package path cannot contain a NUL byte; check the path you typed"
        )
    root = Path(root)
    where = root / "model.json"
    try:
        data = where.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"{where}: not found; is {root} a model package?") from None
    except OSError as exc:
        raise PackageError(f"{where}: cannot read ({exc.strerror})") from None
    # Files are checked (existence, sha256) when a back end reads one: a package whose INT8 file
    # is missing can still run its ONNX file, and the fallback chain records why.
    return ModelPackage(root=root, manifest=parse_manifest(data, where))
