"""TensorRT's INT8 rows: symmetric QDQ (zero-point 0, int8), checked as the engine builder needs.

TensorRT's explicit quantisation takes only symmetric int8 Q/DQ, so a TensorRT target gets its
own row instead of onnxruntime's S8S8 / U8S8 ones (whose activation zero-points are not 0):
``quantize_static`` with ``QuantFormat.QDQ``, per-channel int8 weights, int8 activations,
``ActivationSymmetric`` and ``WeightSymmetric``, biases in float. Each file passes
:func:`image.model.tensorrt.check_tensorrt_qdq` before it is measured. When that row fails the
accuracy gate, a second one keeps the last layer (the classifier head) in float, which is where a
symmetric activation range costs most.
"""

from __future__ import annotations

from pathlib import Path

from image.model.openvino_rows import passes_gate
from image.model.quantise import QuantisationError, quantise_onnx_int8
from image.model.table import Variant
from image.model.tensorrt import TensorRtQuantisationError, check_tensorrt_qdq
from image.model.variants import Scratch, failed

INT8_TRT_ONNX = "model_int8.onnx"
INT8_TRT_HEAD_ONNX = "model_int8_float_head.onnx"


def tensorrt_rows(
    sc: Scratch, fp32: str, calibration: Path | None, parent_top1: float, max_drop: float
) -> list[Variant]:
    """The symmetric INT8 row, and the float-head row when the first one fails the gate."""
    rows = [_row(sc, "int8-trt", INT8_TRT_ONNX, fp32, calibration, parent_top1, False)]
    if not passes_gate(rows[0], max_drop):
        rows.append(
            _row(
                sc, "int8-trt-float-head", INT8_TRT_HEAD_ONNX, fp32, calibration, parent_top1, True
            )
        )
    return rows


def _row(
    sc: Scratch,
    name: str,
    file: str,
    fp32: str,
    calibration: Path | None,
    parent_top1: float,
    float_head: bool,
) -> Variant:
    path = sc.root / file
    try:
        quantise_onnx_int8(
            sc.parent,
            path,
            source=fp32,
            calibration=calibration,
            symmetric=True,
            float_head=float_head,
        )
        check_tensorrt_qdq(path.read_bytes(), str(path))
    except (QuantisationError, TensorRtQuantisationError) as exc:
        return failed(name, file, "int8", "f32", f"not built: {exc}")
    sc.add(file, "int8")
    v = sc.row(name, file, "int8", "f32", parent_top1)
    v.note = "symmetric QDQ (TensorRT), last layer in float" if float_head else "symmetric QDQ"
    return v
