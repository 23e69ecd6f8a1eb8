"""Read what the builder needs from a .tflite file (untrusted input) without TensorFlow.

A .tflite file is a FlatBuffer with the file identifier ``TFL3`` (schema: TensorFlow Lite's
``schema.fbs``). Read here: the operator codes (builtin code, custom code), which of them the
operators use, and the first subgraph's first input and output tensors (type, shape,
quantisation). Every offset is bounds-checked; anything else is a :class:`TfliteFormatError`
naming the file and the field.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from image.errors import BuildError

IDENTIFIER = b"TFL3"
CUSTOM = 32  # BuiltinOperator.CUSTOM
# TensorType enum -> numpy dtype name
TENSOR_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    5: "string",
    6: "bool",
    7: "int16",
    8: "complex64",
    9: "int8",
    10: "float64",
}
MAX_ITEMS = 1 << 20  # no real model has a million operators or tensors in one vector


class TfliteFormatError(BuildError):
    """Bytes that are not a readable .tflite FlatBuffer."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the file declares it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None
    zero_point: int | None


@dataclass(frozen=True)
class TfliteInfo:
    """The parts of a .tflite file the builder checks."""

    builtin_codes: tuple[int, ...]  # per operator code
    custom_codes: tuple[str, ...]  # per operator code ("" for builtins)
    used_custom: frozenset[str]  # custom codes that some operator of some subgraph uses
    input: TensorSpec
    output: TensorSpec


class _Buf:
    """Bounds-checked FlatBuffer reads over ``data``; ``where`` names the file in errors."""

    def __init__(self, data: bytes, where: str) -> None:
        self.data, self.where = data, where

    def fail(self, what: str) -> TfliteFormatError:
        return TfliteFormatError(f"{self.where}: not a valid .tflite file: {what}")

    def unpack(self, fmt: str, pos: int, what: str) -> int | float:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise self.fail(f"{what} at offset {pos} is outside the file ({len(self.data)} bytes)")
        value: int | float = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def u32(self, pos: int, what: str) -> int:
        return int(self.unpack("<I", pos, what))

    def field(self, table: int, index: int, what: str) -> int | None:
        """Absolute position of field ``index`` of the table at ``table``, None if absent."""
        vtable = table - int(self.unpack("<i", table, f"{what} vtable offset"))
        vsize = int(self.unpack("<H", vtable, f"{what} vtable size"))
        if 4 + 2 * index >= vsize:
            return None
        off = int(self.unpack("<H", vtable + 4 + 2 * index, f"{what} field {index}"))
        return table + off if off else None

    def ref(self, pos: int, what: str) -> int:
        """Follow the uoffset at ``pos``."""
        return pos + self.u32(pos, what)

    def vector(self, pos: int | None, what: str) -> tuple[int, int]:
        """(first element position, length) of the vector whose offset is at ``pos``."""
        if pos is None:
            return 0, 0
        start = self.ref(pos, what)
        n = self.u32(start, f"{what} length")
        if n > MAX_ITEMS:
            raise self.fail(f"{what} claims {n} items")
        return start + 4, n

    def string(self, pos: int | None, what: str) -> str:
        if pos is None:
            return ""
        start, n = self.vector(pos, what)
        if start + n > len(self.data):
            raise self.fail(f"{what} runs past the end of the file")
        return self.data[start : start + n].decode("utf-8", errors="replace")

    def tables(self, table: int, index: int, what: str) -> list[int]:
        start, n = self.vector(self.field(table, index, what), what)
        return [self.ref(start + 4 * i, f"{what}[{i}]") for i in range(n)]

    def scalars(self, table: int, index: int, fmt: str, what: str) -> list[int | float]:
        start, n = self.vector(self.field(table, index, what), what)
        size = struct.calcsize(fmt)
        return [self.unpack(fmt, start + size * i, f"{what}[{i}]") for i in range(n)]

    def scalar(self, table: int, index: int, fmt: str, what: str, default: int) -> int:
        pos = self.field(table, index, what)
        return default if pos is None else int(self.unpack(fmt, pos, what))


def read_tflite(data: bytes, where: str) -> TfliteInfo:
    """Operator codes, used custom ops and the input tensor of a .tflite file's bytes."""
    b = _Buf(data, where)
    if len(data) < 8 or data[4:8] != IDENTIFIER:
        raise b.fail(f"no {IDENTIFIER.decode()} file identifier at offset 4")
    model = b.ref(0, "root table")
    builtins, customs = [], []
    for i, code in enumerate(b.tables(model, 1, "operator_codes")):
        what = f"operator_codes[{i}]"
        deprecated = b.scalar(code, 0, "<b", f"{what}.deprecated_builtin_code", 0)
        builtin = b.scalar(code, 3, "<i", f"{what}.builtin_code", 0)
        builtins.append(max(deprecated, builtin))
        customs.append(b.string(b.field(code, 1, what), f"{what}.custom_code"))
    subgraphs = b.tables(model, 2, "subgraphs")
    if not subgraphs:
        raise b.fail("no subgraph")
    used = set()
    for s, sg in enumerate(subgraphs):
        for o, op in enumerate(b.tables(sg, 3, f"subgraphs[{s}].operators")):
            index = b.scalar(op, 0, "<I", f"subgraphs[{s}].operators[{o}].opcode_index", 0)
            if index >= len(customs):
                raise b.fail(f"subgraphs[{s}].operators[{o}] uses operator code {index} of "
                             f"{len(customs)}")  # fmt: skip
            if customs[index]:
                used.add(customs[index])
    sg = subgraphs[0]
    return TfliteInfo(
        tuple(builtins), tuple(customs), frozenset(used), _io(b, sg, 1), _io(b, sg, 2)
    )


def _io(b: _Buf, sg: int, field: int) -> TensorSpec:
    """The first tensor of the subgraph's inputs (field 1) or outputs (field 2)."""
    tensors = b.tables(sg, 0, "subgraphs[0].tensors")
    kind = "inputs" if field == 1 else "outputs"
    io = b.scalars(sg, field, "<i", f"subgraphs[0].{kind}")
    if not io or not 0 <= int(io[0]) < len(tensors):
        raise b.fail(f"subgraphs[0].{kind} {io[:4]} does not name one of {len(tensors)} tensors")
    t = tensors[int(io[0])]
    what = f"subgraphs[0].tensors[{int(io[0])}]"
    code = b.scalar(t, 1, "<b", f"{what}.type", 0)
    if code not in TENSOR_TYPES:
        raise b.fail(f"{what}.type {code} is not a TensorType")
    shape = tuple(int(d) for d in b.scalars(t, 0, "<i", f"{what}.shape"))
    scale = zero_point = None
    q = b.field(t, 4, f"{what}.quantization")
    if q is not None:
        qt = b.ref(q, f"{what}.quantization")
        scales = b.scalars(qt, 2, "<f", f"{what}.quantization.scale")
        zeros = b.scalars(qt, 3, "<q", f"{what}.quantization.zero_point")
        scale = float(scales[0]) if scales else None
        zero_point = int(zeros[0]) if zeros else None
    name = b.string(b.field(t, 3, what), f"{what}.name")
    return TensorSpec(name, shape, TENSOR_TYPES[code], scale, zero_point)
