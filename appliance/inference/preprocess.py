"""Frame -> input tensor: resize/letterbox, colour order, normalisation, layout, quantisation.

Normalisation and quantisation are folded into one lookup table per channel (256 entries), so a
uint8 frame becomes a float32 or int8/uint8 tensor in one gather, exactly as
``q = clip(round(((p * scale - mean) / std) / q_scale + q_zero_point))`` would compute it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.inference.backends.base import LoadedModel
from appliance.inference.package import InputSpec, expected_shape


@dataclass(frozen=True)
class Letterbox:
    """How input-tensor coordinates map back to the frame: frame = (tensor - pad) / scale."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float


def build_lut(
    spec: InputSpec, dtype: np.dtype, q_scale: float = 0.0, q_zero: int = 0
) -> np.ndarray:
    """[3, 256] table: pixel value per channel -> model input value (in model colour order)."""
    p = np.arange(256, dtype=np.float64)
    real = np.stack([(p * spec.scale - m) / s for m, s in zip(spec.mean, spec.std, strict=True)])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        q = np.round(real / q_scale + q_zero) if q_scale > 0 else np.round(real)
        return np.clip(q, info.min, info.max).astype(dtype)
    return real.astype(dtype)


def resize(image: np.ndarray, width: int, height: int, mode: str) -> tuple[np.ndarray, Letterbox]:
    """Stretch or letterbox ``image`` (HxWx3 uint8) to ``width`` x ``height``."""
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image, Letterbox(1.0, 1.0, 0.0, 0.0)
    import cv2

    if mode == "stretch":
        out = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        return out, Letterbox(width / w, height / h, 0.0, 0.0)
    s = min(width / w, height / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    scaled = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out = np.full((height, width, 3), 114, dtype=np.uint8)
    px, py = (width - nw) // 2, (height - nh) // 2
    out[py : py + nh, px : px + nw] = scaled
    return out, Letterbox(s, s, float(px), float(py))


class Preprocessor:
    """Callable turning one HxWx3 uint8 frame (RGB or BGR) into a batch of 1 for a model."""

    def __init__(
        self,
        spec: InputSpec,
        shape: tuple[int, int, int, int],
        layout: str,
        dtype: np.dtype,
        *,
        q_scale: float = 0.0,
        q_zero: int = 0,
    ) -> None:
        self.spec = spec
        self.layout = layout
        self.shape = shape
        self.height, self.width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        self.lut = build_lut(spec, np.dtype(dtype), q_scale, q_zero)
        self._flat = self.lut.ravel()
        self._offsets = (np.arange(3, dtype=np.intp) * 256).reshape(1, 1, 3)

    @classmethod
    def for_model(cls, model: LoadedModel) -> Preprocessor:
        m = model.package.manifest
        q = model.file.quantization
        info = model.input
        scale = q.input_scale if q else info.scale
        zero = q.input_zero_point if q else info.zero_point
        return cls(
            m.input,
            expected_shape(m, model.file),
            model.layout,
            info.dtype,
            q_scale=scale,
            q_zero=zero,
        )

    def __call__(self, image: np.ndarray, color: str = "RGB") -> tuple[np.ndarray, Letterbox]:
        img, box = resize(image, self.width, self.height, self.spec.resize)
        if color != self.spec.color:
            img = img[..., ::-1]
        x = self._flat[img.astype(np.intp) + self._offsets]  # HxWx3 in the model's dtype
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None]), box
