"""YUYV and I420 to BGR with libyuv (Google's SIMD YUV library, BSD-3-Clause), through ctypes.

libyuv is what Chromium and WebRTC convert camera frames with: SSSE3/AVX2 on x86-64, NEON on
arm64. Debian ships it as ``libyuv0`` (0.7 MB, needs only libjpeg-turbo and the C++ runtime).
The library name is a literal in :func:`_load` so PyInstaller's ctypes scan finds it and bundles
it (with libjpeg) into the frozen runtime; its ctypes loader then looks inside the bundle first.

Two calls per frame, both SIMD: ``YUY2ToARGB`` (BT.601 limited range, the matrix of V4L2 webcams
and of OpenCV's ``COLOR_YUV2BGR_YUYV``; libyuv's "ARGB" is B, G, R, A in memory) into a scratch
buffer kept per thread, then ``ARGBToRGB24`` (libyuv's "RGB24" is B, G, R in memory) into the
frame. H.264 pictures (I420, from ``openh264.py``) take one call, ``I420ToRGB24`` (BT.601
limited range too). Without the library, both functions return None and the caller uses numpy.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np

_scratch = threading.local()


@functools.lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    """libyuv with its two functions typed, or None if this system has no usable libyuv."""
    try:
        lib = ctypes.CDLL("libyuv.so.0")
        sig: list[Any] = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
        ]  # (ptr, stride) x 2
        for name in ("YUY2ToARGB", "ARGBToRGB24"):
            fn = getattr(lib, name)
            fn.argtypes = [*sig, ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
        i420 = lib.I420ToRGB24
        i420.argtypes = [*sig, *sig, ctypes.c_int, ctypes.c_int]
        i420.restype = ctypes.c_int
    except (OSError, AttributeError):  # not installed, or a build without these functions
        return None
    return lib


def available() -> bool:
    """True if libyuv loads here (the frozen runtime bundles it; a dev venv needs libyuv0)."""
    return _load() is not None


def _argb(width: int, height: int) -> np.ndarray:
    """This thread's scratch BGRA buffer (a fresh 1.2 MB buffer per frame costs page faults)."""
    buf: np.ndarray | None = getattr(_scratch, "buf", None)
    if buf is None or buf.shape != (height, width, 4):
        buf = np.empty((height, width, 4), dtype=np.uint8)
        _scratch.buf = buf
    return buf


def yuyv_to_bgr(raw: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Packed YUYV (``raw``: at least width*height*2 uint8, even width) to HxWx3 BGR, or None."""
    lib = _load()
    if lib is None:
        return None
    src = np.ascontiguousarray(raw[: width * height * 2])
    argb = _argb(width, height)
    out = np.empty((height, width, 3), dtype=np.uint8)
    if lib.YUY2ToARGB(src.ctypes.data, width * 2, argb.ctypes.data, width * 4, width, height):
        return None  # libyuv refused the geometry: let numpy do it (and report what is wrong)
    if lib.ARGBToRGB24(argb.ctypes.data, width * 4, out.ctypes.data, width * 3, width, height):
        return None
    return out


def i420_to_bgr(
    y: int, y_stride: int, u: int, v: int, uv_stride: int, width: int, height: int
) -> np.ndarray | None:
    """Planar I420 at the addresses ``y``, ``u``, ``v`` to HxWx3 BGR, or None without libyuv."""
    lib = _load()
    if lib is None:
        return None
    out = np.empty((height, width, 3), dtype=np.uint8)
    if lib.I420ToRGB24(
        y, y_stride, u, uv_stride, v, uv_stride, out.ctypes.data, width * 3, width, height
    ):
        return None
    return out
