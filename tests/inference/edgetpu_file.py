"""Edge TPU files for tests, laid out as ``edgetpu_compiler`` writes a fully mapped model.

No ``edgetpu_compiler`` (and no Coral) is installable here. A compiled file is the INT8 model's
input and output tensors (same types, shapes and quantisation) around one ``CUSTOM`` operator
``edgetpu-custom-op`` whose custom options hold the compiled Edge TPU program. Here the
"program" is the source INT8 .tflite itself, so :class:`EdgeTpuStandIn` (the stand-in for
libedgetpu, the only double of the Edge TPU path) can execute it on the CPU interpreter the way
the accelerator executes its program: the results are the INT8 model's.
"""

from __future__ import annotations

from typing import Any

import flatbuffers
import tflite

from appliance.inference.backends.litert import EdgeTpuLibrary

CUSTOM = 32


def edgetpu_tflite(int8: bytes) -> bytes:
    """A compiled-for-the-Edge-TPU .tflite of the full-INT8 file ``int8``."""
    src = tflite.Model.GetRootAsModel(int8, 0).Subgraphs(0)
    io = [src.Tensors(src.Inputs(0)), src.Tensors(src.Outputs(0))]
    b = flatbuffers.Builder(len(int8) + 4096)
    tensors = []
    for t in io:
        q = t.Quantization()
        name = b.CreateString(t.Name())
        shape = b.CreateNumpyVector(t.ShapeAsNumpy())
        scale = b.CreateNumpyVector(q.ScaleAsNumpy())
        zero = b.CreateNumpyVector(q.ZeroPointAsNumpy())
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, scale)
        tflite.QuantizationParametersAddZeroPoint(b, zero)
        qp = tflite.QuantizationParametersEnd(b)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, t.Type())
        tflite.TensorAddBuffer(b, 0)
        tflite.TensorAddName(b, name)
        tflite.TensorAddQuantization(b, qp)
        tensors.append(tflite.TensorEnd(b))
    program = b.CreateByteVector(int8)
    ins, outs = b.CreateNumpyVector(_i32([0])), b.CreateNumpyVector(_i32([1]))
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, ins)
    tflite.OperatorAddOutputs(b, outs)
    tflite.OperatorAddCustomOptions(b, program)
    op = tflite.OperatorEnd(b)
    custom = b.CreateString("edgetpu-custom-op")
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, CUSTOM)
    tflite.OperatorCodeAddBuiltinCode(b, CUSTOM)
    tflite.OperatorCodeAddCustomCode(b, custom)
    tflite.OperatorCodeAddVersion(b, 1)
    code = tflite.OperatorCodeEnd(b)
    sg_ins, sg_outs = b.CreateNumpyVector(_i32([0])), b.CreateNumpyVector(_i32([1]))
    tv, opv = _offsets(b, tensors), _offsets(b, [op])
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tv)
    tflite.SubGraphAddInputs(b, sg_ins)
    tflite.SubGraphAddOutputs(b, sg_outs)
    tflite.SubGraphAddOperators(b, opv)
    sg = tflite.SubGraphEnd(b)
    tflite.BufferStart(b)
    empty = tflite.BufferEnd(b)
    sgv, cv, bv = _offsets(b, [sg]), _offsets(b, [code]), _offsets(b, [empty])
    desc = b.CreateString("Edge TPU Compiler (test stand-in layout)")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, cv)
    tflite.ModelAddSubgraphs(b, sgv)
    tflite.ModelAddDescription(b, desc)
    tflite.ModelAddBuffers(b, bv)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _i32(values: list[int]) -> Any:
    import numpy as np

    return np.array(values, np.int32)


def _offsets(b: flatbuffers.Builder, offs: list[int]) -> int:
    b.StartVector(4, len(offs), 4)
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return int(b.EndVector())


def edgetpu_program(data: bytes) -> bytes:
    """The compiled program inside an Edge TPU file (the custom options of its custom op)."""
    sg = tflite.Model.GetRootAsModel(data, 0).Subgraphs(0)
    return bytes(sg.Operators(0).CustomOptionsAsNumpy().tobytes())


class EdgeTpuStandIn(EdgeTpuLibrary):
    """Stands in for libedgetpu + a Coral: records the device, runs the program on the CPU."""

    def __init__(self) -> None:
        self.devices: list[str] = []

    def open(self, module: Any, data: bytes, threads: int, device: str) -> Any:
        self.devices.append(device)
        return module.Interpreter(model_content=edgetpu_program(data), num_threads=threads)
