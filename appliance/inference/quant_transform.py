"""Quantised inputs in one ``cv2.transform``: exact, or not used at all.

A uint8/int8 model input is ``q = clip(round(p * a_c + b_c))`` per channel, which the
pre-processor keeps as a 256-entry table per channel (``preprocess.build_lut``). ``cv2.LUT``
with a 3-channel table is slow: 92 us for 224x224x3 right after an inference, against 20 us
for one ``cv2.transform`` with a diagonal 3x4 matrix. int8 is computed as ``q + 128`` in uint8
(the same saturation) and its sign bit flipped after, in place.

Whether the transform rounds every value exactly as the table does is not assumed: it is run
over every pixel value at every position of the model's input size and compared with the
table; one difference and the caller keeps the table. Found here (OpenCV 5.0): a diagonal
matrix is exact wherever no value falls on a .5 (the table's rounding of a tie depends on
float64 noise); a non-diagonal one (a colour swap folded in) is not, so the colour order is
fixed on the small uint8 canvas before, as for the table.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def quant_matrix(
    scale: float,
    mean: list[float],
    std: list[float],
    q_scale: float,
    q_zero: int,
    signed: bool,
) -> np.ndarray:
    """Diagonal 3x4 matrix: ``q = a_c p + b_c`` (+128 for int8) per channel."""
    s = np.asarray(std, np.float64)
    a = scale / s / q_scale
    b = -np.asarray(mean, np.float64) / s / q_scale + q_zero + (128.0 if signed else 0.0)
    return np.column_stack([np.diag(a), b])


def apply(cv2: Any, frame: np.ndarray, matrix: np.ndarray, dst: np.ndarray, signed: bool) -> None:
    """``frame`` (HxWx3 uint8) -> ``dst`` (HxWx3 uint8: the tensor's bytes)."""
    cv2.transform(frame, matrix, dst=dst)
    if signed:  # q + 128 -> q's two's complement bits
        np.bitwise_xor(dst, 128, out=dst)


def exact_transform(
    cv_lut: np.ndarray, matrix: np.ndarray, height: int, width: int, signed: bool
) -> np.ndarray | None:
    """``matrix`` if the transform equals ``cv2.LUT(frame, cv_lut)`` for every frame, else None.

    Each output channel depends on one input value, so frames whose pixels hold the same value
    in all three channels, shifted 256 times along the pixels, put every value at every
    position: ~25 ms once per model at 224x224.
    """
    try:
        import cv2
    except ImportError:
        return None
    n = height * width
    values = np.arange(n + 256, dtype=np.int64) % 256
    frames = np.repeat(values.astype(np.uint8)[:, None], 3, axis=1)  # [n + 256, 3]
    want = cv_lut[0][values]  # the table's bytes for each value, per channel
    got = np.empty((height, width, 3), np.uint8)
    flat = got.reshape(n, 3)
    for shift in range(256):
        apply(cv2, frames[shift : shift + n].reshape(height, width, 3), matrix, got, signed)
        if not np.array_equal(flat, want[shift : shift + n]):
            return None
    return matrix
