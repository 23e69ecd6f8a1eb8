"""Write tiny FP32 and full-INT8 (uint8 in/out) TFLite classifiers without TensorFlow.

Built with the flatbuffers schema bindings of the ``tflite`` package: input [1, H, W, 3] ->
FULLY_CONNECTED (the kernel flattens) -> logits [1, C]. The INT8 file is laid out like the
TensorFlow converter's full-integer output: uint8 input -> QUANTIZE -> int8 FC (symmetric int8
weights, int32 bias) -> QUANTIZE -> uint8 output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZE, FULLY_CONNECTED = 114, 9
FLOAT32, INT32, UINT8, INT8 = 0, 2, 3, 9


@dataclass
class _T:
    name: str
    shape: list[int]
    dtype: int
    data: bytes | None = None
    scale: float | None = None
    zero_point: int = 0


def _build(
    tensors: list[_T],
    ops: list[tuple[int, list[int], list[int]]],
    inputs: list[int],
    outputs: list[int],
) -> bytes:
    import importlib

    import flatbuffers

    def mod(name: str):
        # tflite/__init__ re-exports the classes under the module names: import the modules.
        return importlib.import_module(f"tflite.{name}")

    Buffer, Model, Operator, OperatorCode = (
        mod("Buffer"),
        mod("Model"),
        mod("Operator"),
        mod("OperatorCode"),
    )
    QuantizationParameters, SubGraph, Tensor = (
        mod("QuantizationParameters"),
        mod("SubGraph"),
        mod("Tensor"),
    )
    FCO = mod("FullyConnectedOptions")
    BuiltinOptions = mod("BuiltinOptions").BuiltinOptions

    b = flatbuffers.Builder(1024)

    def ivec(start, values: list[int]) -> int:
        start(b, len(values))
        for v in reversed(values):
            b.PrependInt32(v)
        return int(b.EndVector())

    # Buffers: 0 is the empty sentinel, then one per constant tensor.
    buf_offsets, tensor_buffer = [], []
    datas = [b""] + [t.data for t in tensors if t.data is not None]
    for data in datas:
        vec = b.CreateByteVector(data) if data else None
        Buffer.BufferStart(b)
        if vec is not None:
            Buffer.BufferAddData(b, vec)
        buf_offsets.append(Buffer.BufferEnd(b))
    k = 0
    for t in tensors:
        if t.data is not None:
            k += 1
            tensor_buffer.append(k)
        else:
            tensor_buffer.append(0)

    t_offsets = []
    for t, buf in zip(tensors, tensor_buffer, strict=True):
        name = b.CreateString(t.name)
        shape = ivec(Tensor.TensorStartShapeVector, t.shape)
        q = None
        if t.scale is not None:
            QuantizationParameters.QuantizationParametersStartScaleVector(b, 1)
            b.PrependFloat32(t.scale)
            scale = b.EndVector()
            QuantizationParameters.QuantizationParametersStartZeroPointVector(b, 1)
            b.PrependInt64(t.zero_point)
            zp = b.EndVector()
            QuantizationParameters.QuantizationParametersStart(b)
            QuantizationParameters.QuantizationParametersAddScale(b, scale)
            QuantizationParameters.QuantizationParametersAddZeroPoint(b, zp)
            q = QuantizationParameters.QuantizationParametersEnd(b)
        Tensor.TensorStart(b)
        Tensor.TensorAddShape(b, shape)
        Tensor.TensorAddType(b, t.dtype)
        Tensor.TensorAddBuffer(b, buf)
        Tensor.TensorAddName(b, name)
        if q is not None:
            Tensor.TensorAddQuantization(b, q)
        t_offsets.append(Tensor.TensorEnd(b))

    codes = sorted({op for op, _, _ in ops})
    code_offsets = []
    for c in codes:
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, c)
        OperatorCode.OperatorCodeAddBuiltinCode(b, c)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        code_offsets.append(OperatorCode.OperatorCodeEnd(b))

    op_offsets = []
    for op, ins, outs in ops:
        iv = ivec(Operator.OperatorStartInputsVector, ins)
        ov = ivec(Operator.OperatorStartOutputsVector, outs)
        opts = None
        if op == FULLY_CONNECTED:
            FCO.FullyConnectedOptionsStart(b)
            opts = FCO.FullyConnectedOptionsEnd(b)
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, codes.index(op))
        Operator.OperatorAddInputs(b, iv)
        Operator.OperatorAddOutputs(b, ov)
        if opts is not None:
            Operator.OperatorAddBuiltinOptionsType(b, BuiltinOptions.FullyConnectedOptions)
            Operator.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(Operator.OperatorEnd(b))

    def ovec(start, offs: list[int]) -> int:
        start(b, len(offs))
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return int(b.EndVector())

    tv = ovec(SubGraph.SubGraphStartTensorsVector, t_offsets)
    opv = ovec(SubGraph.SubGraphStartOperatorsVector, op_offsets)
    inv = ivec(SubGraph.SubGraphStartInputsVector, inputs)
    outv = ivec(SubGraph.SubGraphStartOutputsVector, outputs)
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, tv)
    SubGraph.SubGraphAddOperators(b, opv)
    SubGraph.SubGraphAddInputs(b, inv)
    SubGraph.SubGraphAddOutputs(b, outv)
    sg = SubGraph.SubGraphEnd(b)

    sgv = ovec(Model.ModelStartSubgraphsVector, [sg])
    cv = ovec(Model.ModelStartOperatorCodesVector, code_offsets)
    bv = ovec(Model.ModelStartBuffersVector, buf_offsets)
    desc = b.CreateString("edgekiln test model")
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, cv)
    Model.ModelAddSubgraphs(b, sgv)
    Model.ModelAddDescription(b, desc)
    Model.ModelAddBuffers(b, bv)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@dataclass
class TinyTflite:
    """The weights and both files of one tiny classifier."""

    weights: np.ndarray  # [C, H*W*3] float32, applied to pixel/255
    bias: np.ndarray  # [C]
    fp32: bytes
    int8: bytes
    input_scale: float
    output_scale: float
    output_zero_point: int


def tiny_tflite_classifier(size: int = 8, classes: int = 4, seed: int = 0) -> TinyTflite:
    """FP32 and INT8 files computing logits = W @ (pixels / 255) + b on an NHWC input."""
    rng = np.random.default_rng(seed)
    n = size * size * 3
    w = rng.normal(0, 0.2, (classes, n)).astype(np.float32)
    bias = rng.normal(0, 0.1, (classes,)).astype(np.float32)
    shape = [1, size, size, 3]
    fp32 = _build(
        [
            _T("input", shape, FLOAT32),
            _T("w", [classes, n], FLOAT32, w.tobytes()),
            _T("b", [classes], FLOAT32, bias.tobytes()),
            _T("logits", [1, classes], FLOAT32),
        ],
        [(FULLY_CONNECTED, [0, 1, 2], [3])],
        [0],
        [3],
    )
    s_in = 1 / 255
    w_scale = float(np.abs(w).max() / 127)
    wq = np.clip(np.round(w / w_scale), -127, 127).astype(np.int8)
    bq = np.round(bias / (s_in * w_scale)).astype(np.int32)
    # Output range of the float model on random frames, widened by 25 %: a calibration stand-in.
    calib = rng.integers(0, 256, (256, n)) / 255
    bound = float(np.abs(calib @ w.T + bias).max() * 1.25)
    s_out = 2 * bound / 255
    zp_out = 0  # int8 symmetric range around 0 -> uint8 zero point 128
    int8 = _build(
        [
            _T("input", shape, UINT8, scale=s_in, zero_point=0),
            _T("input_int8", shape, INT8, scale=s_in, zero_point=-128),
            _T("w", [classes, n], INT8, wq.tobytes(), scale=w_scale, zero_point=0),
            _T("b", [classes], INT32, bq.tobytes(), scale=s_in * w_scale, zero_point=0),
            _T("logits_int8", [1, classes], INT8, scale=s_out, zero_point=zp_out),
            _T("logits", [1, classes], UINT8, scale=s_out, zero_point=zp_out + 128),
        ],
        [(QUANTIZE, [0], [1]), (FULLY_CONNECTED, [1, 2, 3], [4]), (QUANTIZE, [4], [5])],
        [0],
        [5],
    )
    return TinyTflite(w, bias, fp32, int8, s_in, s_out, zp_out + 128)


def tflite_classifier_package(root: Path, count: int = 64, seed: int = 0) -> Path:
    """A package with model.tflite (FP32) and model_int8.tflite (uint8 I/O) and a reference split.

    Labels are the float model's predictions; the INT8 file's ``top1`` is measured with the bare
    interpreter, as the model tool records it.
    """
    from ai_edge_litert.interpreter import Interpreter

    from tests.inference.fixtures import manifest, sha256

    t = tiny_tflite_classifier(seed=seed)
    root.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(seed + 1).integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    labels = (images.reshape(count, -1) / 255 @ t.weights.T + t.bias).argmax(1).astype(np.int64)
    np.savez_compressed(root / "reference.npz", images=images, labels=labels)
    interp = Interpreter(model_content=t.int8, num_threads=1)
    interp.allocate_tensors()
    preds = []
    for img in images:
        interp.set_tensor(interp.get_input_details()[0]["index"], img[None])
        interp.invoke()
        preds.append(int(interp.get_tensor(interp.get_output_details()[0]["index"]).argmax()))
    int8_top1 = float((np.array(preds) == labels).mean())
    (root / "model.tflite").write_bytes(t.fp32)
    (root / "model_int8.tflite").write_bytes(t.int8)
    files: list[dict[str, Any]] = [
        {"path": "model.tflite", "format": "tflite", "precision": "fp32", "sha256": sha256(t.fp32)},
        {
            "path": "model_int8.tflite",
            "format": "tflite",
            "precision": "int8",
            "sha256": sha256(t.int8),
            "top1": int8_top1,
            "quantization": {
                "input_scale": t.input_scale,
                "input_zero_point": 0,
                "input_dtype": "uint8",
                "output_scale": t.output_scale,
                "output_zero_point": t.output_zero_point,
                "output_dtype": "uint8",
            },
        },
    ]
    m = manifest(files, size=8, count=count)
    m["name"] = "tiny-tflite"
    m["input"].update(shape=[1, 8, 8, 3], layout="NHWC", mean=[0.0] * 3, std=[1.0] * 3)
    (root / "model.json").write_text(json.dumps(m, indent=2))
    return root
