"""TensorRT targets: ship ONNX for the on-device engine build, with INT8 made ready on the host.

TensorRT is not installable on any machine here (docs/decisions.md §25), so the gate runs the
same files on onnxruntime (CPU) as a proxy and the table says so; the device repeats the
measurement at its first engine build. Two INT8 routes travel in the package:

* ``model_int8.onnx``: QDQ (explicit quantisation), what TensorRT 10 recommends; the engine
  builder needs ``BuilderFlag.INT8`` set for it (appliance/inference/backends/tensorrt.py sets
  it from the file's precision). TensorRT takes only symmetric quantisation: every
  QuantizeLinear / DequantizeLinear has an int8 zero-point of 0, no bias is an int32 DQ, and no
  operator-level quantised op (QLinearConv, ConvInteger, ...) is in the graph.
  :func:`check_tensorrt_qdq` refuses any other file before it can ship for a TensorRT target.
* ``calibration.cache``: TensorRT's calibration-cache text for implicit quantisation (TensorRT
  8.x calibrators' ``read_calibration_cache``): a header line, then ``tensor: <hex>`` per
  activation, the hex being the big-endian bits of the float32 scale ``absmax / 127``, from the
  same MinMax ranges ONNX Runtime collected over the calibration split.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.inference.package import ModelPackage
from image.errors import BuildError
from image.model.quantise import QuantisationError, _Reader, calibration_images, preprocess_batches

CACHE_FILE = "calibration.cache"
# TensorRT writes "TRT-<major><minor><patch>-EntropyCalibration2"; 8.6.x is JetPack 6's.
DEFAULT_HEADER = "TRT-8601-EntropyCalibration2"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Quantised operators of the operator-oriented format (QOperator) and dynamic quantisation:
# TensorRT's ONNX parser reads none of them.
QOPERATOR_OPS = (
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QGemm",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
)


class TensorRtQuantisationError(BuildError):
    """An INT8 ONNX file is not what TensorRT's explicit quantisation accepts."""


def check_tensorrt_qdq(data: bytes, where: str) -> int:
    """Refuse an INT8 ONNX that TensorRT cannot build; return its number of Q/DQ nodes.

    Accepted: QDQ format only; every QuantizeLinear / DequantizeLinear has a constant int8
    zero-point equal to 0 (symmetric), so weights and activations are int8.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise TensorRtQuantisationError(f"{where}: not an ONNX model: {exc}") from None
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    problems: dict[str, list[str]] = {}  # kind -> each occurrence

    def bad(kind: str, text: str) -> None:
        problems.setdefault(kind, []).append(text)

    count = 0
    for i, n in enumerate(graph.node):
        if n.op_type in QOPERATOR_OPS or n.domain == "com.microsoft":
            name = n.name or f"#{i}"
            bad("qop", f"node {name}: {n.domain or 'ai.onnx'}:{n.op_type} is not Q/DQ")
        elif n.op_type in QDQ_OPS:
            count += 1
            _check_qdq_node(n, n.name or f"#{i}", consts, bad)
    if count == 0:
        bad("none", "no QuantizeLinear/DequantizeLinear node: the file is not quantised")
    if problems:
        # One example of each kind of fault, with how often it occurs.
        shown = "; ".join(
            each[0] + (f" (and {len(each) - 1} more like it)" if len(each) > 1 else "")
            for each in problems.values()
        )
        raise TensorRtQuantisationError(
            f"{where}: not TensorRT INT8 (symmetric int8 Q/DQ with zero-point 0): {shown}. "
            "Quantise it with kiln model optimise --target jetson-orin (onnxruntime "
            "quantize_static, QuantFormat.QDQ, ActivationSymmetric and WeightSymmetric)"
        )
    return count


def _check_qdq_node(
    n: Any, name: str, consts: dict[str, np.ndarray], bad: Callable[[str, str], None]
) -> None:
    """One QuantizeLinear / DequantizeLinear: a constant int8 zero-point of 0, int8 data."""
    zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if zp is None:
        bad("nozp", f"node {name} ({n.op_type}): no constant zero-point (ONNX: uint8)")
        return
    if zp.dtype != np.int8:
        bad(f"dtype-{zp.dtype}", f"node {name} ({n.op_type}): zero-point is {zp.dtype}, not int8")
    if np.any(zp != 0):
        bad(
            "asym",
            f"node {name} ({n.op_type}): zero-point {zp.ravel()[:4].tolist()} is not 0 "
            "(asymmetric)",
        )
    x = consts.get(n.input[0])
    if n.op_type == "DequantizeLinear" and x is not None and x.dtype != np.int8:
        bad(f"x-{x.dtype}", f"node {name}: dequantises {x.dtype} {n.input[0]!r}, not int8")


def calibration_ranges(package: ModelPackage, calibration: Path | None = None) -> dict[str, float]:
    """Activation tensor name -> absolute maximum over the calibration split (ORT MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    f = package.select_file(("onnx",))
    batches = preprocess_batches(package, f.path, calibration_images(package, calibration))
    reader: Any = type("Reader", (_Reader, CalibrationDataReader), {})(
        package.manifest.input.name, batches
    )
    with tempfile.TemporaryDirectory(prefix="kiln-trt-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(package.read_verified(f))
        try:
            cal = create_calibrator(
                src,
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=CalibrationMethod.MinMax,
            )
            cal.collect_data(reader)
            data = cal.compute_data()
        except Exception as exc:
            raise QuantisationError(f"{package.path_of(f)}: calibration failed: {exc}") from exc
    out: dict[str, float] = {}
    for name, td in data.data.items():
        lo, hi = (
            float(np.asarray(v).max() if i else np.asarray(v).min())
            for i, v in enumerate(td.range_value)
        )
        out[name] = max(abs(lo), abs(hi))
    return out


def calibration_cache(ranges: dict[str, float], header: str = DEFAULT_HEADER) -> bytes:
    """TensorRT calibration-cache bytes for ``ranges`` (scale = absmax / 127 per tensor)."""
    lines = [header]
    for name in sorted(ranges):
        scale = max(ranges[name], 1e-8) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return ("\n".join(lines) + "\n").encode()


def parse_calibration_cache(data: bytes) -> tuple[str, dict[str, float]]:
    """Read a cache back (header, tensor -> scale); the inverse of :func:`calibration_cache`."""
    header, *rows = data.decode().splitlines()
    scales = {}
    for row in rows:
        name, _, hexbits = row.rpartition(": ")
        scales[name] = struct.unpack(">f", bytes.fromhex(hexbits))[0]
    return header, scales
