"""Read an ONNX model's graph inputs (name, dims) without the onnx library.

The opencv back end cannot report its input shape, and the frozen runtime does not carry the
onnx package, so this walks the protobuf wire format directly: ModelProto.graph (7) ->
GraphProto.input (11) -> ValueInfoProto{name (1), type (2) -> TypeProto.tensor_type (1) ->
shape (2) -> dim (1) -> dim_value (1) | dim_param (2)}. Inputs that are also initializers
(GraphProto.initializer (5), TensorProto.name (8)) are weights, not real inputs, and are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from appliance.inference.errors import PackageError

Dim = int | str  # a fixed size, or a symbolic name ("N", "batch") / "?" when unknown


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield num, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated length-delimited field")
            yield num, wire, buf[pos : pos + size]
            pos += size
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated fixed-size field")


def _sub(buf: bytes, field: int) -> Iterator[bytes]:
    for num, wire, value in _fields(buf):
        if num == field and wire == 2 and isinstance(value, bytes):
            yield value


def _dims(value_info: bytes) -> list[Dim]:
    dims: list[Dim] = []
    for type_proto in _sub(value_info, 2):
        for tensor in _sub(type_proto, 1):
            for shape in _sub(tensor, 2):
                for dim in _sub(shape, 1):
                    d: Dim = "?"
                    for num, _wire, v in _fields(dim):
                        if num == 1 and isinstance(v, int):
                            d = v - (1 << 64) if v >= 1 << 63 else v
                        elif num == 2 and isinstance(v, bytes):
                            d = v.decode("utf-8", "replace") or "?"
                    dims.append(d)
    return dims


# TensorProto.DataType -> numpy, for the input types a model package may declare.
ELEM_TYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
}


def _elem_type(value_info: bytes) -> int:
    for type_proto in _sub(value_info, 2):
        for tensor in _sub(type_proto, 1):
            for num, _wire, v in _fields(tensor):
                if num == 1 and isinstance(v, int):
                    return v
    return 0


def onnx_input_dtype(data: bytes, name: str) -> np.dtype:
    """numpy dtype of graph input ``name`` (float32 when it is another or an unknown type)."""
    for graph in _sub(data, 7):
        for vi in _sub(graph, 11):
            if next((v.decode("utf-8", "replace") for v in _sub(vi, 1)), "") == name:
                return ELEM_TYPES.get(_elem_type(vi), np.dtype(np.float32))
    return np.dtype(np.float32)


def onnx_inputs(data: bytes, where: str = "model.onnx") -> list[tuple[str, list[Dim]]]:
    """The graph's real inputs as (name, dims); raise :class:`PackageError` on malformed bytes."""
    try:
        graphs = list(_sub(data, 7))
        if not graphs:
            raise ValueError("no graph (ModelProto field 7)")
        graph = graphs[-1]
        weights = {
            v.decode("utf-8", "replace")
            for init in _sub(graph, 5)
            for num, _w, v in _fields(init)
            if num == 8 and isinstance(v, bytes)
        }
        out: list[tuple[str, list[Dim]]] = []
        for vi in _sub(graph, 11):
            name = next((v.decode("utf-8", "replace") for v in _sub(vi, 1)), "")
            if name not in weights:
                out.append((name, _dims(vi)))
    except ValueError as exc:
        raise PackageError(f"{where}: not a readable ONNX model ({exc})") from None
    if not out:
        raise PackageError(f"{where}: the ONNX graph declares no inputs")
    return out
