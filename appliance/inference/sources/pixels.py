"""Camera pixel formats to BGR without OpenCV: YUYV (numpy), MJPEG (simplejpeg), GREY.

YUYV uses the BT.601 limited-range matrix in 8-bit fixed point (the one V4L2 cameras, FFmpeg's
swscale and OpenCV's ``COLOR_YUV2BGR_YUYV`` assume for SD/HD webcams); chroma is computed once
per pixel pair. MJPEG goes through simplejpeg (libjpeg-turbo), which decodes straight to BGR.
"""

from __future__ import annotations

import numpy as np

from appliance.inference.errors import SourceError

# Fixed-point BT.601 limited range: R = 1.164(Y-16) + 1.596(V-128), etc., scaled by 256.
_Y = ((np.arange(256, dtype=np.int32) - 16) * 298 + 128).astype(np.int32)
_RV = ((np.arange(256, dtype=np.int32) - 128) * 409).astype(np.int32)
_GU = ((np.arange(256, dtype=np.int32) - 128) * -100).astype(np.int32)
_GV = ((np.arange(256, dtype=np.int32) - 128) * -208).astype(np.int32)
_BU = ((np.arange(256, dtype=np.int32) - 128) * 516).astype(np.int32)

FORMATS = ("YUYV", "MJPG", "JPEG", "GREY")
Buffer = bytes | bytearray | memoryview


def yuyv_to_bgr(data: Buffer, width: int, height: int) -> np.ndarray:
    """Packed YUYV 4:2:2 (Y0 U Y1 V per pixel pair) to an HxWx3 uint8 BGR image."""
    need = width * height * 2
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < need or width % 2:
        raise SourceError(
            f"YUYV frame of {raw.size} bytes does not hold {width}x{height} pixels "
            f"({need} bytes, even width); the camera's format is not what it announced"
        )
    quad = raw[:need].reshape(height, width // 2, 4)
    y = _Y[quad[..., 0::2]]  # (H, W/2, 2): the two lumas of each pair
    u, v = quad[..., 1], quad[..., 3]
    rv = _RV[v][..., None]
    guv = (_GU[u] + _GV[v])[..., None]
    bu = _BU[u][..., None]
    out = np.empty((height, width // 2, 2, 3), dtype=np.uint8)
    for channel, chroma in ((0, bu), (1, guv), (2, rv)):
        value = y + chroma
        value >>= 8
        np.clip(value, 0, 255, out=value)
        out[..., channel] = value
    return out.reshape(height, width, 3)


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
