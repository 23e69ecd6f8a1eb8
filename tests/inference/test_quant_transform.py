"""Quantised inputs through one cv2.transform: byte for byte what the table gives, or the table.

The reference is computed here independently: the frame resized by ``preprocess.resize``, put
in the model's colour order, then looked up in ``build_lut``'s table with numpy indexing.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.package import InputSpec
from appliance.inference.preprocess import Preprocessor, build_lut, resize
from appliance.inference.quant_transform import exact_transform, quant_matrix

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def table_lookup(
    spec: InputSpec, dtype: str, q_scale: float, q_zero: int, image: np.ndarray, color: str
) -> np.ndarray:
    _n, h, w, _c = spec.shape
    small, _ = resize(image, w, h, spec.resize)
    if color != spec.color:
        small = small[..., ::-1]
    lut = build_lut(spec, np.dtype(dtype), q_scale, q_zero)
    return np.stack([lut[c][small[..., c]] for c in range(3)], axis=-1)[None]


def spec_of(
    size: tuple[int, int],
    dtype: str,
    scale: float,
    mean: list[float],
    std: list[float],
    resize_mode: str = "letterbox",
) -> InputSpec:
    h, w = size
    return InputSpec("x", [1, h, w, 3], "NHWC", dtype, "RGB", resize_mode, scale, mean, std)  # type: ignore[arg-type]


CASES = [
    ("int8", 0.0187, -14, 1 / 255, *IMAGENET),  # an ImageNet-normalised int8 model
    ("uint8", 1 / 255, 0, 1 / 255, [0.0] * 3, [1.0] * 3),  # raw pixels
    ("uint8", 0.0186584, 114, 1 / 255, *IMAGENET),
    ("uint8", 0.0078125, 128, 1 / 127.5, [1.0] * 3, [1.0] * 3),
]


@pytest.mark.parametrize(("dtype", "q_scale", "q_zero", "scale", "mean", "std"), CASES)
@pytest.mark.parametrize("size", [(12, 12), (9, 20), (224, 224)])
def test_transform_is_used_and_equals_the_table(
    dtype: str,
    q_scale: float,
    q_zero: int,
    scale: float,
    mean: list[float],
    std: list[float],
    size: tuple[int, int],
) -> None:
    spec = spec_of(size, dtype, scale, mean, std)
    pre = Preprocessor(
        spec,
        tuple(spec.shape),
        "NHWC",
        np.dtype(dtype),
        q_scale=q_scale,  # type: ignore[arg-type]
        q_zero=q_zero,
        reuse=True,
    )
    assert pre._qmatrix is not None  # these are exact on OpenCV 5.0: the fast path is tested
    rng = np.random.default_rng(size[0])
    for frame_size, color in (((size[0], size[1]), "RGB"), ((31, 17), "BGR"), ((480, 640), "RGB")):
        image = rng.integers(0, 256, (*frame_size, 3), dtype=np.uint8)
        got, _ = pre(image, color)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, table_lookup(spec, dtype, q_scale, q_zero, image, color))


def test_ties_keep_the_table() -> None:
    """int8 in [-1, 1] at 1/127.5: p - 127.5 lands on .5 for every p, where the table's
    rounding follows float64 noise and the transform's does not: the check must refuse it."""
    spec = spec_of((16, 16), "int8", 1 / 127.5, [1.0] * 3, [1.0] * 3)
    lut = build_lut(spec, np.dtype(np.int8), 1 / 127.5, 0)
    cv_lut = np.ascontiguousarray(lut.T.reshape(1, 256, 3)).view(np.uint8)
    m = quant_matrix(spec.scale, spec.mean, spec.std, 1 / 127.5, 0, signed=True)
    assert exact_transform(cv_lut, m, 16, 16, signed=True) is None
    pre = Preprocessor(spec, (1, 16, 16, 3), "NHWC", np.dtype(np.int8), q_scale=1 / 127.5, q_zero=0)
    assert pre._qmatrix is None
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        pre(image, "BGR")[0], table_lookup(spec, "int8", 1 / 127.5, 0, image, "BGR")
    )


def test_a_wrong_matrix_is_refused() -> None:
    """The check is what makes the fast path safe: a matrix one step off is caught."""
    spec = spec_of((8, 8), "uint8", 1 / 255, *IMAGENET)
    lut = build_lut(spec, np.dtype(np.uint8), 0.0186584, 114)
    cv_lut = np.ascontiguousarray(lut.T.reshape(1, 256, 3)).view(np.uint8)
    m = quant_matrix(spec.scale, spec.mean, spec.std, 0.0186584, 114, signed=False)
    assert exact_transform(cv_lut, m, 8, 8, signed=False) is not None
    off = m.copy()
    off[1, 3] += 0.3  # one channel's offset moved: some values round the other way
    assert exact_transform(cv_lut, off, 8, 8, signed=False) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["uint8", "int8"]),
    st.floats(0.003, 0.05),
    st.integers(-20, 20),
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    st.lists(st.floats(0.1, 1.0), min_size=3, max_size=3),
    st.integers(0, 2**32 - 1),
)
def test_either_path_gives_the_table(
    dtype: str, q_scale: float, q_shift: int, mean: list[float], std: list[float], seed: int
) -> None:
    q_zero = q_shift if dtype == "int8" else 128 + q_shift
    spec = spec_of((10, 14), dtype, 1 / 255, mean, std, "stretch")
    pre = Preprocessor(
        spec, (1, 10, 14, 3), "NHWC", np.dtype(dtype), q_scale=q_scale, q_zero=q_zero
    )
    image = np.random.default_rng(seed).integers(0, 256, (21, 13, 3), dtype=np.uint8)
    for color in ("RGB", "BGR"):
        np.testing.assert_array_equal(
            pre(image, color)[0], table_lookup(spec, dtype, q_scale, q_zero, image, color)
        )
