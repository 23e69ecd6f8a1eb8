"""TensorRT targets: ship ONNX for the on-device engine build, with INT8 made ready on the host.

TensorRT is not installable on any machine here (docs/decisions.md §25), so the gate runs the
same files on onnxruntime (CPU) as a proxy and the table says so; the device repeats the
measurement at its first engine build. Two INT8 routes travel in the package:

* ``model_int8.onnx``: QDQ (explicit quantisation), what TensorRT 10 recommends; the engine
  builder needs ``BuilderFlag.INT8`` set for it.
* ``calibration.cache``: TensorRT's calibration-cache text for implicit quantisation (TensorRT
  8.x calibrators' ``read_calibration_cache``): a header line, then ``tensor: <hex>`` per
  activation, the hex being the big-endian bits of the float32 scale ``absmax / 127``, from the
  same MinMax ranges ONNX Runtime collected over the calibration split.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from appliance.inference.package import ModelPackage
from image.model.quantise import QuantisationError, _Reader, calibration_images, preprocess_batches

CACHE_FILE = "calibration.cache"
# TensorRT writes "TRT-<major><minor><patch>-EntropyCalibration2"; 8.6.x is JetPack 6's.
DEFAULT_HEADER = "TRT-8601-EntropyCalibration2"


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
