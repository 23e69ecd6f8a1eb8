"""Frame -> input tensor: resize/letterbox, colour order, normalisation, layout, quantisation.

Normalisation and quantisation are folded into one lookup table per channel (256 entries), so a
uint8 frame becomes a float32 or int8/uint8 tensor in one gather, exactly as
``q = clip(round(((p * scale - mean) / std) / q_scale + q_zero_point))`` would compute it.

Float inputs are normalised as ``p * a + b`` per channel (``a = scale/std``, ``b = -mean/std``),
fused into the uint8 -> float32 conversion by OpenCV when it is present (``cv2.addWeighted``:
one pass per plane instead of convert, multiply and add). This runs on every frame right after
the model has evicted the caches, where each extra call costs several times its warm price.
With ``reuse=True`` (the pipeline) the tensor is written into one buffer owned by the
preprocessor: valid until the next call. With ``out`` (a back end's own input buffer, see
``LoadedModel.run_frame``) it is written there and ``out`` itself is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from appliance.inference.backends.base import LoadedModel
from appliance.inference.package import InputSpec, expected_shape
from appliance.inference.quant_transform import apply, exact_transform, quant_matrix
from appliance.inference.resize import LinearResizer, resize_linear


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


class Preprocess(Protocol):
    """What the pipeline and the self-test call: a frame -> (input batch, the letterbox used)."""

    def __call__(
        self, image: np.ndarray, color: str = "RGB", out: np.ndarray | None = None
    ) -> tuple[np.ndarray, Letterbox]: ...


def _into(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``x`` copied into ``out`` (then ``out``), or ``x`` itself without one."""
    if out is None:
        return x
    out[...] = x
    return out


IDENTITY = Letterbox(1.0, 1.0, 0.0, 0.0)
PAD = 114  # letterbox border pixel value (YOLO's grey)


def letterbox_geometry(
    w: int, h: int, width: int, height: int
) -> tuple[int, int, int, int, Letterbox]:
    """(scaled width, scaled height, pad x, pad y, mapping) to fit w x h into width x height."""
    s = min(width / w, height / h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    px, py = (width - nw) // 2, (height - nh) // 2
    return nw, nh, px, py, Letterbox(s, s, float(px), float(py))


def resize(
    image: np.ndarray,
    width: int,
    height: int,
    mode: str,
    resizer: LinearResizer | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Stretch or letterbox ``image`` (HxWx3 uint8) to ``width`` x ``height``.

    Without OpenCV in numpy (appliance/inference/resize.py), through ``resizer`` if given (a
    pre-processor's own: it keeps its buffers from frame to frame).
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image, IDENTITY
    cv2 = _cv2()

    def scale(img: np.ndarray, sw: int, sh: int) -> np.ndarray:
        if cv2 is None:
            return (resizer or resize_linear)(img, sw, sh)
        out: np.ndarray = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_LINEAR)
        return out

    if mode == "stretch":
        return scale(image, width, height), Letterbox(width / w, height / h, 0.0, 0.0)
    nw, nh, px, py, box = letterbox_geometry(w, h, width, height)
    scaled = scale(image, nw, nh)
    out = np.full((height, width, 3), PAD, dtype=np.uint8)
    out[py : py + nh, px : px + nw] = scaled
    return out, box


def _other(color: str) -> str:
    return "BGR" if color == "RGB" else "RGB"


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


class Preprocessor:
    """Callable turning one HxWx3 uint8 frame (RGB or BGR) into a batch of 1 for a model.

    Float inputs: ``x * a + b`` per channel (``a = scale/std``, ``b = -mean/std``), fused into the
    conversion by OpenCV when present (one pass per plane for NCHW; one pass over the pixels
    for NHWC when all channels share ``a`` and ``b``, letterbox padding written once), else one
    numpy conversion pass and two in-place passes. Quantised inputs: one 3x4 ``cv2.transform``
    where it was checked to reproduce the table exactly (``quant_transform``), else one table
    lookup per channel.
    ``reuse``: write every tensor into the same buffer (valid until the next call).
    """

    def __init__(
        self,
        spec: InputSpec,
        shape: tuple[int, int, int, int],
        layout: str,
        dtype: np.dtype,
        *,
        q_scale: float = 0.0,
        q_zero: int = 0,
        reuse: bool = False,
    ) -> None:
        self.spec = spec
        self.layout = layout
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.height, self.width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        self.lut = build_lut(spec, self.dtype, q_scale, q_zero)
        std = np.asarray(spec.std, np.float64)
        a64 = spec.scale / std
        b64 = -np.asarray(spec.mean, np.float64) / std
        a, b = a64.astype(np.float32), b64.astype(np.float32)
        if layout == "NCHW":
            self._a, self._b = a.reshape(3, 1, 1), b.reshape(3, 1, 1)
        else:
            # Rows of W*3 values: numpy is slow when the innermost broadcast axis has length 3.
            self._a, self._b = np.tile(a, self.width), np.tile(b, self.width)
        self._quantised = self.dtype.kind in "iu"
        # cv2.LUT maps a 3-channel uint8 image through a (1, 256, 3) table in one fast pass;
        # int8 tables are stored as their bit patterns and viewed back as int8.
        self._cv_lut = (
            np.ascontiguousarray(self.lut.T.reshape(1, 256, 3)).view(np.uint8)
            if (self._quantised and self.dtype.itemsize == 1)
            else None
        )
        # NHWC uint8/int8 with OpenCV: one diagonal 3x4 cv2.transform, 3-4x faster than the
        # 3-channel LUT, used only where it was checked to give the same bytes.
        self._signed = self.dtype == np.int8
        self._qmatrix = (
            exact_transform(
                self._cv_lut,
                quant_matrix(spec.scale, spec.mean, spec.std, q_scale, q_zero, self._signed),
                self.height,
                self.width,
                self._signed,
            )
            if self._cv_lut is not None and layout == "NHWC" and q_scale > 0
            else None
        )
        self.reuse = reuse
        self._out_shape = (
            (1, 3, self.height, self.width) if layout == "NCHW" else (1, self.height, self.width, 3)
        )
        self._out: np.ndarray | None = None
        self._resizer = LinearResizer()  # without OpenCV: camera frames to the model's size
        self._cv: Any = _cv2() if self.dtype == np.float32 else None
        self._ab = [(float(x), float(y)) for x, y in zip(a64, b64, strict=True)]
        self._uniform = len(set(self._ab)) == 1
        # NHWC with per-channel a/b: cv2.transform's 3x4 matrix per colour order of the frame
        # (the diagonal scales, the last column shifts, a swapped frame reads the anti-diagonal).
        same = np.column_stack([np.diag(a64), b64])
        self._matrix = {
            spec.color: same,
            _other(spec.color): np.column_stack([same[:, 2::-1], b64]),
        }
        # NHWC: the frame resized (letterbox border written once) in the model's colour order.
        self._frames = FramePreprocessor(
            self.width, self.height, spec.resize, spec.color, reuse=True
        )

    @classmethod
    def for_model(
        cls, model: LoadedModel, *, reuse: bool = False
    ) -> Preprocessor | FramePreprocessor:
        """The pre-processing ``model``'s file needs (a fused file takes the frame itself)."""
        m = model.package.manifest
        if model.file.fused is not None:
            _n, h, w, _c = expected_shape(m, model.file)
            return FramePreprocessor(w, h, m.input.resize, model.file.fused.color, reuse=reuse)
        q = model.file.quantization
        info = model.input
        scale = q.input_scale if q else info.scale
        zero = q.input_zero_point if q else info.zero_point
        shape = expected_shape(m, model.file)
        return cls(
            m.input, shape, model.layout, info.dtype, q_scale=scale, q_zero=zero, reuse=reuse
        )

    def _buffer(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is not None:
            return out
        if not self.reuse:
            return np.empty(self._out_shape, self.dtype)
        if self._out is None:
            self._out = np.empty(self._out_shape, self.dtype)
        return self._out

    def __call__(
        self, image: np.ndarray, color: str = "RGB", out: np.ndarray | None = None
    ) -> tuple[np.ndarray, Letterbox]:
        if out is not None and (out.shape != self._out_shape or out.dtype != self.dtype):
            out = None  # not a buffer this model's tensor fits: use our own
        if self._cv is not None and self.layout == "NCHW":
            return self._planes_cv(image, color, out)  # planes are reordered for free
        cv2 = _cv2() if self.layout == "NHWC" else None
        if cv2 is None:
            x, box = self._numpy(image, color)
            return _into(x, out), box
        # Interleaved: size and colour order on the uint8 pixels first (a reused canvas), then
        # one conversion pass: a 3x4 transform, a table lookup, or one fused convert+scale+shift.
        if self._cv is not None and not self._uniform and color in self._matrix:
            # Per-channel a/b: one conversion, then one 3x4 transform that also reorders.
            batch, box = self._frames(image, self.spec.color)  # sized; channels left as they are
            out = self._buffer(out)
            cv2.transform(batch[0].astype(np.float32), self._matrix[color], dst=out[0])
            return out, box
        batch, box = self._frames(image, color)
        small = batch[0]
        if self._cv_lut is not None:
            out = self._buffer(out)
            dst = out[0].view(np.uint8)  # int8: its bit patterns
            if self._qmatrix is not None:
                apply(cv2, small, self._qmatrix, dst, self._signed)
            else:
                cv2.LUT(small, self._cv_lut, dst=dst)
            return out, box
        if self._cv is not None and self._uniform:
            out = self._buffer(out)
            a, b = self._ab[0]
            cv2.addWeighted(small, a, small, 0.0, b, dst=out[0], dtype=cv2.CV_32F)
            return out, box
        return _into(self._numpy(small, self.spec.color)[0], out), box

    def _numpy(self, image: np.ndarray, color: str) -> tuple[np.ndarray, Letterbox]:
        img, box = resize(image, self.width, self.height, self.spec.resize, self._resizer)
        if color != self.spec.color:
            img = img[..., ::-1]
        if self._cv_lut is not None and self.layout == "NHWC":
            cv2 = _cv2()
            if cv2 is not None:
                out = cv2.LUT(np.ascontiguousarray(img), self._cv_lut).view(self.dtype)
                return out[None], box
        if self.layout == "NCHW":
            img = img.transpose(2, 0, 1)
        if self._quantised:
            x = np.empty(img.shape, self.dtype)
            for c in range(3):
                if self.layout == "NCHW":
                    x[c] = self.lut[c][img[c]]
                else:
                    x[..., c] = self.lut[c][img[..., c]]
        elif self.layout == "NCHW":
            # Reorder the uint8 pixels first, then convert in contiguous order: a strided
            # uint8 -> float32 conversion costs twice as long (32 vs 16 us at 96x96 here).
            x = np.ascontiguousarray(img).astype(self.dtype)
            x *= self._a
            x += self._b
        else:
            x = np.array(img, dtype=self.dtype, order="C").reshape(self.height, -1)
            x *= self._a
            x += self._b
            x = x.reshape(self.height, self.width, 3)
        return x[None], box

    def _planes_cv(
        self, image: np.ndarray, color: str, out: np.ndarray | None
    ) -> tuple[np.ndarray, Letterbox]:
        """NCHW float: split the pixels into planes, then one fused convert+scale+shift each."""
        cv2 = self._cv
        img, box = resize(image, self.width, self.height, self.spec.resize)
        planes = cv2.split(img)
        if color != self.spec.color:
            planes = planes[::-1]
        out = self._buffer(out)
        for c, (a, b) in enumerate(self._ab):
            cv2.addWeighted(planes[c], a, planes[c], 0.0, b, dst=out[0, c], dtype=cv2.CV_32F)
        return out, box


class FramePreprocessor:
    """For a fused file (normalisation inside the graph): the frame, resized, as uint8 [1,H,W,3].

    Frames in the file's colour order at the model's size go through untouched (a view). Others
    are resized (stretch or letterbox) and reordered in place in one canvas that is reused with
    ``reuse`` (no fresh pages per frame; the letterbox border is written once while the frame
    size holds).
    """

    def __init__(
        self, width: int, height: int, mode: str, color: str, *, reuse: bool = False
    ) -> None:
        self.width, self.height, self.mode, self.color = width, height, mode, color
        self.reuse = reuse
        self._cv: Any = _cv2()
        self._resizer = LinearResizer()  # without OpenCV: camera frames to the model's size
        self._out: np.ndarray | None = None
        self._padded_for: tuple[int, int] | None = None  # the frame size the border is for

    def _canvas(self, border_for: tuple[int, int] | None) -> np.ndarray:
        """The output canvas; with ``border_for`` its letterbox border is in place."""
        if self._out is None or not self.reuse:
            self._out = np.empty((self.height, self.width, 3), np.uint8)
            self._padded_for = None
        if border_for is None:
            self._padded_for = None  # the caller overwrites every pixel
        elif self._padded_for != border_for:
            self._out[...] = PAD
            self._padded_for = border_for
        return self._out

    def __call__(
        self, image: np.ndarray, color: str = "RGB", out: np.ndarray | None = None
    ) -> tuple[np.ndarray, Letterbox]:
        h, w = image.shape[:2]
        cv2 = self._cv
        swap = color != self.color
        if out is not None and (
            cv2 is None or out.dtype != np.uint8 or out.shape != (1, self.height, self.width, 3)
        ):
            out = None  # not a buffer the frame fits: use our own
        if cv2 is None:
            img, box = resize(image, self.width, self.height, self.mode, self._resizer)
            img = img[..., ::-1] if swap else img
            return np.ascontiguousarray(img)[None], box
        if (w, h) == (self.width, self.height):
            if not swap:
                return _into(np.ascontiguousarray(image)[None], out), IDENTITY
            canvas = out[0] if out is not None else self._canvas(None)
            cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=canvas)
            return canvas[None] if out is None else out, IDENTITY
        if self.mode == "stretch":
            canvas = out[0] if out is not None else self._canvas(None)
            cv2.resize(image, (self.width, self.height), dst=canvas, interpolation=cv2.INTER_LINEAR)
            box = Letterbox(self.width / w, self.height / h, 0.0, 0.0)
        else:
            nw, nh, px, py, box = letterbox_geometry(w, h, self.width, self.height)
            if out is None:
                canvas = self._canvas((w, h))
            else:  # a runtime's buffer: nothing says it keeps the border, so write it each time
                canvas = out[0]
                canvas[:py] = canvas[py + nh :] = PAD
                canvas[py : py + nh, :px] = canvas[py : py + nh, px + nw :] = PAD
            cv2.resize(
                image,
                (nw, nh),
                dst=canvas[py : py + nh, px : px + nw],
                interpolation=cv2.INTER_LINEAR,
            )
        if swap:  # in place: the grey border reads the same in either order
            cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB, dst=canvas)
        return canvas[None] if out is None else out, box
