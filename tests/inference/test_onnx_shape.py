"""The dependency-free ONNX input reader agrees with onnx itself and refuses garbage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.errors import PackageError
from appliance.inference.onnx_shape import onnx_inputs
from tests.inference.fixtures import tiny_classifier_onnx


def _model(dims: list[int | str]) -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((1,), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        # Old exporters list weights as inputs too: the reader must skip them.
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    return bytes(helper.make_model(graph).SerializeToString())


def test_reads_tiny_classifier() -> None:
    assert onnx_inputs(tiny_classifier_onnx(16)) == [("input", ["N", 3, 16, 16])]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, 1 << 40) | st.sampled_from(["N", "batch", "h"]), max_size=6))
def test_dims_round_trip(dims: list[int | str]) -> None:
    assert onnx_inputs(_model(dims)) == [("x", dims)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_is_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(PackageError):
        onnx_inputs(data)


def test_truncated_model_is_refused() -> None:
    data = tiny_classifier_onnx(16)
    with pytest.raises(PackageError, match=r"not a readable ONNX model|declares no inputs"):
        onnx_inputs(data[: len(data) // 2])
