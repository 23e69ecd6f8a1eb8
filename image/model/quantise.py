"""INT8 post-training quantisation of a package's ONNX model with ONNX Runtime (QDQ, per-channel).

Calibration tensors are made by the device's own ``Preprocessor`` from the package's
calibration split, so the ranges ONNX Runtime observes are those of the tensors the device will
feed. The result is a QDQ ONNX file (int8 weights per channel, int8 activations), which both
onnxruntime and OpenVINO run with INT8 kernels.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from appliance.inference.package import ModelPackage, expected_shape, file_layout
from appliance.inference.preprocess import Preprocessor
from image.errors import BuildError
from image.model.eval import load_split

log = logging.getLogger(__name__)


class QuantisationError(BuildError):
    """Post-training quantisation could not run (missing calibration split, tool failure)."""


def calibration_images(package: ModelPackage, override: Path | None = None) -> np.ndarray:
    """The calibration split (``override`` if given, else the package's ``calibration.split``)."""
    if override is not None:
        return load_split(override)
    cal = package.manifest.calibration
    if cal is None:
        raise QuantisationError(
            f"{package.manifest_path}: calibration: missing; INT8 quantisation needs a "
            "calibration split (add calibration.npz and a 'calibration' entry, or pass "
            "--calibration FILE.npz)"
        )
    path = package.root / cal.split
    if cal.sha256 is not None and path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != cal.sha256:
            raise QuantisationError(
                f"{path}: sha256 is {digest}, model.json calibration.sha256 says {cal.sha256}; "
                "the split was replaced: restore it or update the digest"
            )
    images = load_split(path)
    if len(images) == 0:
        raise QuantisationError(f"{package.root / cal.split}: the calibration split is empty")
    return images


def preprocess_batches(package: ModelPackage, path: str, images: np.ndarray) -> list[np.ndarray]:
    """Float input batches of 1 for the ONNX file ``path``, exactly as the device makes them."""
    m = package.manifest
    f = package.select_file(("onnx",), path)
    pre = Preprocessor(m.input, expected_shape(m, f), file_layout(m, f), np.dtype(np.float32))
    return [pre(img, "RGB")[0] for img in images]


class _Reader:
    """onnxruntime ``CalibrationDataReader``: one preprocessed image per call."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._it = iter([{name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        raise NotImplementedError


def quantise_onnx_int8(
    package: ModelPackage,
    out: Path,
    *,
    source: str = "model.onnx",
    calibration: Path | None = None,
    unsigned_activations: bool = False,
    reduce_range: bool = False,
    symmetric: bool = False,
    float_head: bool = False,
) -> Path:
    """Write an INT8 QDQ ONNX of ``source`` to ``out`` (per-channel int8 weights).

    Activations are int8 (S8S8), or uint8 with ``unsigned_activations`` (U8S8).
    ``reduce_range``: 7-bit weights, so a u8 x s7 pair sum fits int16 on a CPU without VNNI.
    ``symmetric``: what TensorRT accepts (explicit quantisation): int8 activations with
    zero-point 0 too, and biases left in float (TensorRT has no int32 DequantizeLinear).
    ``float_head``: the last layer (the Gemm/MatMul/Conv that makes the output) stays float.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise QuantisationError(f"onnxruntime.quantization is not importable: {exc}") from None

    f = package.select_file(("onnx",), source)
    data = package.read_verified(f)
    batches = preprocess_batches(package, f.path, calibration_images(package, calibration))
    reader: Any = type("Reader", (_Reader, CalibrationDataReader), {})(
        package.manifest.input.name, batches
    )
    with tempfile.TemporaryDirectory(prefix="kiln-quant-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        src.write_bytes(data)
        prepped = Path(tmp) / "prepped.onnx"
        try:
            # Shape inference + graph optimisation first, as onnxruntime recommends for QDQ.
            quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        except Exception as exc:  # its own untyped errors; quantising the raw graph still works
            log.warning("quant_pre_process failed (%s); quantising the original graph", exc)
            prepped = src
        exclude = [last_layer(prepped)] if float_head else []
        try:
            quantize_static(
                str(prepped),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # U8 activations (U8S8) ran ~1.7x faster than S8S8 on this AVX2 CPU for a
                # MobileNetV2; without VNNI they may saturate: the gate decides.
                activation_type=QuantType.QUInt8 if unsigned_activations else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=exclude,
                extra_options={
                    "ActivationSymmetric": symmetric,
                    "WeightSymmetric": True,
                    "QuantizeBias": not symmetric,
                },
            )
        except Exception as exc:
            raise QuantisationError(
                f"{package.path_of(f)}: onnxruntime quantize_static failed: {exc}"
            ) from exc
    log.info("quantised %s with %d calibration images -> %s", f.path, len(batches), out)
    return out


HEAD_OPS = ("Gemm", "MatMul", "Conv")


def last_layer(path: Path) -> str:
    """The name of the Gemm/MatMul/Conv that makes the graph's first output (named if unnamed).

    Walks back from the output through shape-only and activation nodes (Flatten, Reshape,
    Softmax, ...); nodes without a name get one, written back to ``path``, so that
    ``quantize_static(nodes_to_exclude=...)`` can name it.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    renamed = False
    for i, n in enumerate(graph.node):
        if not n.name:
            n.name, renamed = f"kiln_node_{i}", True
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type not in HEAD_OPS:
        node = producer.get(node.input[0]) if node.input else None
    if node is None:
        raise QuantisationError(
            f"{path}: no {'/'.join(HEAD_OPS)} node makes the output {graph.output[0].name!r}; "
            "there is no last layer to keep in float"
        )
    if renamed:
        onnx.save(model, str(path))
    return str(node.name)
