"""OpenVINO variants: FP16 IR and NNCF INT8 IR (with accuracy control when plain INT8 fails).

NNCF (``pip install nncf``, ~220 MB with scipy/scikit-learn) is a build-host dependency only;
when it is missing the OpenVINO target still has ONNX Runtime's QDQ INT8, which OpenVINO runs
with INT8 kernels too, and the table notes what was skipped.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from appliance.inference.package import ModelPackage
from image.model.quantise import QuantisationError, calibration_images, preprocess_batches

log = logging.getLogger(__name__)

FP16_IR = "model_fp16.xml"
INT8_IR = "model_int8.xml"
INT8_7BIT_IR = "model_int8_7bit.xml"


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def fp16_ir(package: ModelPackage, root: Path) -> str:
    """Write ``model_fp16.xml/.bin`` (FP16-compressed weights) of the FP32 ONNX into ``root``."""
    import openvino as ov

    f = package.select_file(("onnx",))
    model = ov.Core().read_model(str(package.path_of(f)))
    ov.save_model(model, str(root / FP16_IR), compress_to_fp16=True)
    return FP16_IR


def nncf_int8_ir(
    package: ModelPackage,
    root: Path,
    *,
    calibration: Path | None = None,
    accuracy: tuple[np.ndarray, np.ndarray, float] | None = None,
    overflow_fix: bool = False,
) -> str:
    """Write ``model_int8.xml/.bin`` (``model_int8_7bit`` with ``overflow_fix``) into ``root``.

    ``accuracy`` = (images, labels, max_drop): use ``quantize_with_accuracy_control``, which
    keeps the layers that cost the most accuracy in float until the drop is within max_drop.
    ``overflow_fix``: 7-bit weights in every layer (NNCF's default does only the first), so a
    u8 x s7 pair sum fits int16 on a CPU without VNNI (``vpmaddubsw`` saturates otherwise).
    """
    import nncf
    import openvino as ov

    f = package.select_file(("onnx",))
    model = ov.Core().read_model(str(package.path_of(f)))
    cal = preprocess_batches(package, f.path, calibration_images(package, calibration))
    try:
        fix = nncf.OverflowFix.ENABLE if overflow_fix else nncf.OverflowFix.FIRST_LAYER
        advanced = nncf.AdvancedQuantizationParameters(overflow_fix=fix)
        if accuracy is None:
            q = nncf.quantize(
                model, nncf.Dataset(cal), subset_size=len(cal), advanced_parameters=advanced
            )
        else:
            images, labels, max_drop = accuracy
            val = list(zip(preprocess_batches(package, f.path, images), labels, strict=True))
            q = nncf.quantize_with_accuracy_control(
                model,
                calibration_dataset=nncf.Dataset(cal),
                validation_dataset=nncf.Dataset(val),
                validation_fn=_top1_fn(),
                max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                subset_size=len(cal),
                advanced_quantization_parameters=advanced,
            )
    except Exception as exc:  # NNCF raises many kinds; the message is what matters
        raise QuantisationError(f"{package.path_of(f)}: NNCF quantisation failed: {exc}") from exc
    root.mkdir(parents=True, exist_ok=True)
    name = INT8_7BIT_IR if overflow_fix else INT8_IR
    ov.save_model(q, str(root / name), compress_to_fp16=False)
    return name


def fake_quantize_count(xml: Path) -> int:
    """How many FakeQuantize ops an IR has (0: accuracy control reverted every layer)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _top1_fn() -> Callable[[Any, Any], float]:
    def top1(compiled: Any, data: Any) -> float:
        out = compiled.outputs[0]
        hits = [int(np.argmax(compiled(x)[out]) == int(y)) for x, y in data]
        return float(np.mean(hits)) if hits else 0.0

    return top1
