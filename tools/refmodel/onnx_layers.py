"""Read a reference ONNX model back into a framework-neutral layer list (for the TFLite port).

The reference networks are plain chains (conv, depthwise conv, ReLU6, global avg+max pooling,
dense) with BatchNorm already folded, so their ONNX graphs translate one node at a time. Weights
keep torch layouts: conv [out, in/groups, kh, kw], dense [out, in].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class UnsupportedGraphError(Exception):
    """The ONNX graph holds a node the layer list cannot express."""


def read_layers(path: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Return (layers, weights) of the ONNX chain at ``path``; weights keyed ``<n>.weight|bias``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # exporters sometimes emit weights as Constant nodes
        if node.op_type == "Constant":
            init[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    layers: list[dict[str, Any]] = []
    weights: dict[str, np.ndarray] = {}
    pooled: set[str] = set()
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        n = len(layers)
        if node.op_type == "Conv":
            layer, weights[f"{n}.weight"], weights[f"{n}.bias"] = _conv(path, node, attrs, init)
            layers.append(layer)
        elif node.op_type == "Clip":
            low, high = (float(init[name]) for name in node.input[1:3])
            if (low, high) != (0.0, 6.0):
                raise UnsupportedGraphError(
                    f"{path}: {node.name}: Clip({low}, {high}) is not ReLU6"
                )
            layers.append({"kind": "relu6"})
        elif node.op_type in ("ReduceMean", "ReduceMax"):
            pooled.add(node.op_type)
        elif node.op_type == "Concat":
            if pooled != {"ReduceMean", "ReduceMax"}:
                raise UnsupportedGraphError(f"{path}: {node.name}: Concat outside the pooling head")
            layers.append({"kind": "global_avg_max"})
        elif node.op_type == "Gemm":
            weight = init[node.input[1]]
            if not attrs.get("transB", 0):
                weight = weight.T
            layers.append({"kind": "dense"})
            weights[f"{n}.weight"] = weight
            weights[f"{n}.bias"] = init[node.input[2]]
        elif node.op_type not in ("Constant", "Identity", "Flatten"):
            raise UnsupportedGraphError(f"{path}: {node.name}: op {node.op_type} has no layer")
    return layers, weights


def _conv(
    path: Path, node: Any, attrs: dict[str, Any], init: dict[str, np.ndarray]
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A Conv node as a conv/dwconv layer with its weight and bias (zeros if it has none)."""
    weight = init[node.input[1]]
    groups = int(attrs.get("group", 1))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    strides = list(attrs.get("strides", [1, 1]))
    if len(set(pads)) != 1 or len(set(strides)) != 1:
        raise UnsupportedGraphError(f"{path}: {node.name}: asymmetric pads/strides")
    if groups not in (1, weight.shape[0]):
        raise UnsupportedGraphError(f"{path}: {node.name}: grouped conv ({groups})")
    kind = "dwconv" if groups > 1 else "conv"
    bias = init[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0], np.float32)
    return {"kind": kind, "stride": strides[0], "padding": pads[0]}, weight, bias
