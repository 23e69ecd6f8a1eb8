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


class LinearResizer:
    """Bilinear resize that keeps its taps and float buffers while the sizes stay the same.

    A camera delivers every frame at one size: reusing the buffers spares the page faults of
    four fresh output-sized float arrays per frame (224x224: 1.0 instead of 2.5-3.4 ms on a
    loaded host). Not thread-safe: one per pre-processor; the result is a fresh array.
    """

    def __init__(self) -> None:
        self._key: tuple[int, ...] | None = None
        self._idx: tuple[np.ndarray, ...] = ()
        self._bufs: tuple[np.ndarray, ...] = ()
        self._wy = self._wx = self._u8 = np.empty(0, np.float32)

    def __call__(self, image: np.ndarray, width: int, height: int) -> np.ndarray:
        """Resize HxWxC uint8 ``image`` to ``height`` x ``width`` (bilinear)."""
        h, w, c = image.shape
        key = (h, w, c, width, height)
        if key != self._key:
            y0, y1, fy = _taps(h, height)
            x0, x1, fx = _taps(w, width)
            # Flat indices of the four neighbours of every output value (row-major, channels
            # last): one ``take`` each, into a buffer kept from frame to frame.
            chan = np.arange(c)
            xs = [(x[:, None] * c + chan).reshape(1, width * c) for x in (x0, x1)]
            ys = [(y * (w * c))[:, None] for y in (y0, y1)]
            self._idx = tuple(yy + xx for yy in ys for xx in xs)  # tl, tr, bl, br
            self._wy, self._wx = fy[:, None], np.repeat(fx, c)[None, :]
            self._u8 = np.empty((height, width * c), np.uint8)
            self._bufs = tuple(np.empty((height, width * c), np.float32) for _ in range(4))
            self._key = key
        flat = np.ascontiguousarray(image).reshape(-1)
        tl, tr, bl, br = self._bufs
        wy, wx = self._wy, self._wx
        # The four neighbours of every output value are gathered first, then blended rows-then-
        # columns on output-sized arrays with the channels flattened into each row (numpy is
        # slow when the innermost broadcast axis has length 3): the same float arithmetic as
        # blending whole source rows first, so the same bytes, at a fraction of the cost.
        for idx, dst in zip(self._idx, self._bufs, strict=True):
            np.take(flat, idx, out=self._u8, mode="clip")
            dst[...] = self._u8
        bl -= tl
        bl *= wy
        tl += bl  # the left neighbour column, blended between the two rows
        br -= tr
        br *= wy
        tr += br  # the right one
        tr -= tl
        tr *= wx
        tl += tr
        tl += 0.5
        np.clip(tl, 0, 255, out=tl)
        result: np.ndarray = tl.astype(np.uint8).reshape(height, width, c)
        return result


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize HxWxC uint8 ``image`` to ``height`` x ``width`` (bilinear)."""
    return LinearResizer()(image, width, height)
