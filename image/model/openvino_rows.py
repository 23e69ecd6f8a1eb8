"""OpenVINO's rows of the optimisation table, and its gate on the target's weakest ISA.

Rows beyond the ONNX QDQ files every ONNX runtime gets: the CPU's default precision hint (bf16
here), a QDQ file with 7-bit weights, FP16 IR, NNCF INT8 IR (NNCF's default: 7-bit weights in
the first layer only) and NNCF INT8 IR with 7-bit weights everywhere (``overflow_fix``).

Every INT8 row is then measured again with oneDNN capped at AVX2 (image/model/isa.py) and passes
only if it passes on both (docs/decisions.md §30). 7-bit weights keep a u8 x s7 pair sum inside
int16, so those forms give the same answer with or without VNNI. When no INT8 row passes on both,
NNCF's accuracy control runs from the 7-bit form (it keeps the costliest layers in float) and
that row is measured under the cap too. When plain NNCF already fails on the host, accuracy
control runs from it as before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from image.model.isa import gate_on_weakest_isa, worst_drop_pp
from image.model.nncf import (
    FP16_IR,
    INT8_7BIT_IR,
    INT8_IR,
    fake_quantize_count,
    fp16_ir,
    nncf_available,
    nncf_int8_ir,
)
from image.model.quantise import QuantisationError
from image.model.table import Optimisation, Variant
from image.model.variants import Scratch, failed, int8_u8s7_row


def passes_gate(v: Variant, max_accuracy_drop: float) -> bool:
    """Built, run, and within the drop on every instruction set measured."""
    return not v.error and worst_drop_pp(v.drop_pp, v.drop_pp_isa) <= max_accuracy_drop * 100 + 1e-9


def openvino_rows(
    res: Optimisation, sc: Scratch, fp32: str, int8_u8: str, calibration: Path | None
) -> None:
    """Add OpenVINO's extra rows to ``res``.

    The INT8 ONNX row with the default hint uses the U8S8 file ``int8_u8``: OpenVINO's CPU plugin
    refused the S8S8 file with the default hint on a Sapphire Rapids (AMX) CPU (``No suitable
    implementations``) and compiled the U8S8 one with both hints; NNCF's IR is OpenVINO's own
    INT8 form (FakeQuantize), which the plugin supports on every x86-64 ISA.
    """
    top = res.parent_top1
    # OpenVINO's default on a bf16-capable CPU is bf16 execution; it can beat INT8 there.
    res.variants.append(sc.row("fp32-default-hint", fp32, "fp32", "default", top))
    res.variants.append(sc.row("int8-default-hint", int8_u8, "int8", "default", top))
    res.variants.append(int8_u8s7_row(sc, fp32, calibration, top))
    if not nncf_available():
        res.notes.append("NNCF is not installed (pip install nncf): no FP16/INT8 IR variants")
        return
    for name, planned in (("fp16-ir", FP16_IR), ("int8-nncf", INT8_IR), ("int8-nncf-7bit", "")):
        try:
            if name == "fp16-ir":
                file = fp16_ir(sc.parent, sc.root)
            else:
                seven = not planned  # 7-bit weights in every layer
                file = nncf_int8_ir(sc.parent, sc.root, calibration=calibration, overflow_fix=seven)
            sc.add(file, name[:4])
        except (QuantisationError, RuntimeError) as exc:
            file = planned or INT8_7BIT_IR
            res.variants.append(failed(name, file, name[:4], "f32", f"not built: {exc}"))
            continue
        res.variants.append(sc.row(name, file, name[:4], "f32", top))
    nncf_row = res.variant("int8-nncf")
    if nncf_row.error:
        return
    res.variants.append(sc.row("int8-nncf-default-hint", INT8_IR, "int8", "default", top))
    if not passes_gate(nncf_row, res.max_accuracy_drop):
        accuracy_control_row(res, sc, calibration, overflow_fix=False)


def gate_openvino(
    res: Optimisation, sc: Scratch, fp32: str, threads: int, calibration: Path | None
) -> None:
    """Measure the INT8 rows under the AVX2 cap; if none passes on both, try 7-bit + AC."""
    gate_on_weakest_isa(res, sc.root, fp32, threads)
    int8 = [v for v in res.variants if v.precision == "int8"]
    if any(passes_gate(v, res.max_accuracy_drop) for v in int8):
        return
    if not any(v.name == "int8-nncf-7bit" and not v.error for v in int8):
        return
    accuracy_control_row(res, sc, calibration, overflow_fix=True)
    gate_on_weakest_isa(res, sc.root, fp32, threads)


def accuracy_control_row(
    res: Optimisation, sc: Scratch, calibration: Path | None, *, overflow_fix: bool
) -> None:
    """Let NNCF keep the costliest layers in float (from the 7-bit form with ``overflow_fix``)."""
    base = INT8_7BIT_IR if overflow_fix else INT8_IR
    name = "int8-nncf-7bit-ac" if overflow_fix else "int8-nncf-ac"
    file = base.replace(".xml", "_ac.xml")
    accuracy = (sc.images, sc.labels, res.max_accuracy_drop)
    try:
        nncf_int8_ir(
            sc.parent,
            sc.root / "ac",
            calibration=calibration,
            accuracy=accuracy,
            overflow_fix=overflow_fix,
        )
    except QuantisationError as exc:
        res.variants.append(failed(name, file, "int8", "f32", f"not built: {exc}"))
        return
    shutil.move(sc.root / "ac" / base, sc.root / file)
    shutil.move(
        sc.root / "ac" / base.replace(".xml", ".bin"), sc.root / file.replace(".xml", ".bin")
    )
    shutil.rmtree(sc.root / "ac")
    fq_plain = fake_quantize_count(sc.root / base)
    fq = fake_quantize_count(sc.root / file)
    # A model with every layer reverted to float is not INT8, whatever its file name.
    precision = "int8" if fq else "fp32"
    sc.add(file, precision)
    row = sc.row(name, file, precision, "f32", res.parent_top1)
    row.note = f"accuracy control kept {fq} of {fq_plain} FakeQuantize ops"
    res.variants.append(row)
