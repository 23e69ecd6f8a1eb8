"""Bilinear resize in numpy, for runtimes without OpenCV (a camera frame to the model's size).

Same sampling as OpenCV's ``INTER_LINEAR`` (pixel centres aligned, edges clamped), in float32
rows-then-columns passes; results agree with ``cv2.resize`` within one or two levels (OpenCV
rounds its weights to 11 bits).
"""

from __future__ import annotations

import numpy as np


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = (np.arange(dst, dtype=np.float32) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize HxWxC uint8 ``image`` to ``height`` x ``width`` (bilinear)."""
    h, w = image.shape[:2]
    y0, y1, fy = _taps(h, height)
    x0, x1, fx = _taps(w, width)
    top, bottom = image[y0].astype(np.float32), image[y1].astype(np.float32)
    rows = top + (bottom - top) * fy[:, None, None]
    left, right = rows[:, x0], rows[:, x1]
    out = left + (right - left) * fx[None, :, None]
    out += 0.5
    np.clip(out, 0, 255, out=out)
    result: np.ndarray = out.astype(np.uint8)
    return result
