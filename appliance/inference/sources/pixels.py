"""Camera pixel formats to BGR without OpenCV: YUYV (libyuv, else numpy), MJPEG (simplejpeg), GREY.

YUYV uses the BT.601 limited-range matrix (the one V4L2 cameras, FFmpeg's swscale and OpenCV's
``COLOR_YUV2BGR_YUYV`` assume for SD/HD webcams). libyuv (``libyuv.py``, SIMD, bundled into the
frozen runtime) does it at OpenCV's speed; where it is missing, numpy does the same matrix in
8-bit fixed point (chroma computed once per pixel pair), about ten times slower. MJPEG goes
through simplejpeg (libjpeg-turbo), which decodes straight to BGR.
"""

from __future__ import annotations

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources import libyuv

# Fixed-point BT.601 limited range, scaled by 256: R = 1.164(Y-16) + 1.596(V-128), etc.
_Y_GAIN, _RV, _GU, _GV, _BU = 298, 409, -100, -208, 516

FORMATS = ("YUYV", "MJPG", "JPEG", "GREY")
Buffer = bytes | bytearray | memoryview


def yuyv_to_bgr(data: Buffer, width: int, height: int) -> np.ndarray:
    """Packed YUYV 4:2:2 (Y0 U Y1 V per pixel pair) to an HxWx3 uint8 BGR image."""
    raw = _yuyv_buffer(data, width, height)
    fast = libyuv.yuyv_to_bgr(raw, width, height)
    return fast if fast is not None else yuyv_to_bgr_numpy(raw, width, height)


def _yuyv_buffer(data: Buffer | np.ndarray, width: int, height: int) -> np.ndarray:
    need = width * height * 2
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < need or width % 2 or width <= 0 or height <= 0:
        raise SourceError(
            f"YUYV frame of {raw.size} bytes does not hold {width}x{height} pixels "
            f"({need} bytes, even width); the camera's format is not what it announced"
        )
    return raw


def yuyv_to_bgr_numpy(data: Buffer | np.ndarray, width: int, height: int) -> np.ndarray:
    """:func:`yuyv_to_bgr` in numpy alone (no libyuv on this system)."""
    raw = _yuyv_buffer(data, width, height)
    need = width * height * 2
    # Flat, contiguous int32 arithmetic (numpy's SIMD loops); chroma at half resolution, then
    # repeated for both pixels of its pair. 3-4x faster than per-pixel lookup tables.
    raw = raw[:need]
    y = raw[0::2].astype(np.int32)
    y -= 16
    y *= _Y_GAIN
    y += 128  # rounds the >> 8 below
    u = raw[1::4].astype(np.int32)
    u -= 128
    v = raw[3::4].astype(np.int32)
    v -= 128
    out = np.empty((height * width, 3), dtype=np.uint8)
    for channel, chroma in enumerate((u * _BU, u * _GU + v * _GV, v * _RV)):  # B, G, R
        value = np.repeat(chroma, 2)
        value += y
        value >>= 8
        np.clip(value, 0, 255, out=value)
        out[:, channel] = value
    return out.reshape(height, width, 3)


def i420_to_bgr_numpy(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Planar I420 (Y HxW, U and V at half size, rounded up) to HxWx3 BGR, BT.601 limited range.

    What an H.264 picture is converted with where libyuv is missing (``openh264.py``).
    """
    height, width = y.shape
    luma = y.astype(np.int32)
    luma -= 16
    luma *= _Y_GAIN
    luma += 128
    cu = u.astype(np.int32) - 128
    cv = v.astype(np.int32) - 128
    out = np.empty((height, width, 3), dtype=np.uint8)
    for channel, chroma in enumerate((cu * _BU, cu * _GU + cv * _GV, cv * _RV)):  # B, G, R
        full = np.repeat(np.repeat(chroma, 2, axis=0), 2, axis=1)[:height, :width]
        full += luma
        full >>= 8
        np.clip(full, 0, 255, out=full)
        out[:, :, channel] = full
    return out


def grey_to_bgr(data: Buffer, width: int, height: int) -> np.ndarray:
    """8-bit grey to HxWx3 BGR (the pipeline always sees three channels)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < width * height:
        raise SourceError(f"GREY frame of {raw.size} bytes does not hold {width}x{height} pixels")
    return np.repeat(raw[: width * height].reshape(height, width, 1), 3, axis=2)


def mjpeg_to_bgr(data: Buffer) -> np.ndarray:
    """One MJPEG frame (a JPEG) to HxWx3 BGR with libjpeg-turbo through simplejpeg."""
    try:
        import simplejpeg
    except ImportError as exc:
        raise SourceError(
            f"MJPEG needs simplejpeg, which this runtime lacks ({exc}); install edgekiln[camera] "
            "or ask the camera for YUYV (?format=YUYV)"
        ) from None
    try:
        image: np.ndarray = simplejpeg.decode_jpeg(bytes(data), colorspace="BGR")
    except ValueError as exc:  # a truncated/corrupt frame from the camera
        raise SourceError(f"MJPEG frame of {len(data)} bytes does not decode: {exc}") from None
    return image


def to_bgr(fourcc: str, data: Buffer, width: int, height: int) -> np.ndarray:
    """Convert one captured buffer of pixel format ``fourcc`` to BGR."""
    if fourcc == "YUYV":
        return yuyv_to_bgr(data, width, height)
    if fourcc in ("MJPG", "MJPEG", "JPEG"):
        return mjpeg_to_bgr(data)
    if fourcc == "GREY":
        return grey_to_bgr(data, width, height)
    raise SourceError(f"pixel format {fourcc!r} is not supported; choose one of {FORMATS}")
