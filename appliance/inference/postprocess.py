"""Output tensors -> results: dequantisation, classification top-k, detection decode + NMS.

Detection decoders: SSD-style anchors (MediaPipe's SsdAnchorsCalculator /
TensorsToDetectionsCalculator semantics) and YOLO-style outputs (raw per-stride grids
``[1, A*(5+C), H, W]`` as in YOLOv5, or an already decoded ``[1, N, 4(+1)+C]`` / ``[1, 4+C, N]``
as Ultralytics exports). Boxes are normalised ``[xmin, ymin, xmax, ymax]`` in input-tensor space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from appliance.inference.backends.base import LoadedModel, TensorInfo
from appliance.inference.package import DetectionSpec, Manifest, expected_shape
from appliance.inference.preprocess import Letterbox
from appliance.inference.ssd import (
    MAX_ROWS,
    decode_select,
    decode_ssd,
    sigmoid,
    ssd_anchors,
    ssd_raw_floor,
)

_F32 = np.dtype(np.float32)


def dequantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Integer output tensor -> float32 with its scale/zero-point; float tensors unchanged."""
    if x.dtype is _F32:  # the common case, without a numpy call (builtin dtypes are singletons)
        return x
    if x.dtype.kind in "iu" and info.scale > 0:
        return (x.astype(np.float32) - info.zero_point) * np.float32(info.scale)
    return x.astype(np.float32, copy=False)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def top_k(scores: np.ndarray, labels: list[str], k: int) -> list[dict[str, object]]:
    """The ``k`` best classes of one score vector as ``[{"label", "index", "score"}]``."""
    k = min(k, scores.shape[-1])
    idx = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[-1] else np.arange(len(scores))
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [
        {
            "label": labels[i] if i < len(labels) else str(i),
            "index": int(i),
            "score": round(float(scores[i]), 6),
        }
        for i in idx
    ]


SMALL = 64  # up to this many classes, plain Python beats numpy's per-call overhead (~4x)


def top_k_large(v: np.ndarray, labels: list[str], k: int, kind: str) -> list[dict[str, object]]:
    """:func:`top_k` of ``softmax(v)`` (or of ``v``) for long float vectors, in 5 numpy calls.

    softmax is monotonic, so the top k are picked on the raw values and only their k scores
    are computed; the full vector is touched once more for the softmax denominator.
    """
    n = v.shape[-1]
    k = min(k, n)
    idx = v.argpartition(n - k)[n - k :] if k < n else np.arange(n)
    # k pairs sorted in Python (stable, best first): cheaper than two more numpy calls.
    pairs = sorted(zip(v[idx].tolist(), idx.tolist(), strict=True), key=lambda p: -p[0])
    if kind == "logits":
        m = pairs[0][0]
        e = np.subtract(v, np.float32(m))
        total = float(np.exp(e, out=e).sum(dtype=np.float64))
        pairs = [(math.exp(x - m) / total, i) for x, i in pairs]
    return [
        {"label": labels[i] if i < len(labels) else str(i), "index": i, "score": round(x, 6)}
        for x, i in pairs
    ]


def top_k_small(
    values: list[float], labels: list[str], k: int, kind: str
) -> list[dict[str, object]]:
    """:func:`top_k` of ``softmax(values)`` (or of ``values``) for short float lists."""
    if kind == "logits":
        m = max(values)
        e = [math.exp(v - m) for v in values]
        total = sum(e)
        values = [v / total for v in e]
    order = sorted(range(len(values)), key=lambda i: -values[i])[:k]
    return [
        {
            "label": labels[i] if i < len(labels) else str(i),
            "index": i,
            "score": round(values[i], 6),
        }
        for i in order
    ]


def classify(logits: np.ndarray, kind: str) -> np.ndarray:
    """Scores per class for a batch-of-one output."""
    v = logits.reshape(-1)
    return softmax(v) if kind == "logits" else v


@dataclass
class Detection:
    """One detected object: normalised box, class, score, optional keypoints."""

    box: tuple[float, float, float, float]
    label: int
    score: float
    keypoints: list[tuple[float, float]] = field(default_factory=list)

    def to_json(self, labels: list[str]) -> dict[str, object]:
        return {
            "label": labels[self.label] if self.label < len(labels) else str(self.label),
            "score": round(self.score, 6),
            "box": [round(v, 6) for v in self.box],
            **(
                {"keypoints": [[round(a, 6), round(b, 6)] for a, b in self.keypoints]}
                if self.keypoints
                else {}
            ),
        }


# --- YOLO ------------------------------------------------------------------------------------


def decode_yolo(
    outputs: list[np.ndarray], spec: DetectionSpec, num_classes: int, input_w: int, input_h: int
) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N,4] normalised xyxy, scores [N,C]) from YOLO outputs.

    With ``strides``: one raw grid per stride, shaped [1, A*(5+C), H, W], decoded as YOLOv5 does
    (xy = (2*sig - 0.5 + cell) * stride, wh = (2*sig)^2 * anchor). Without: one decoded tensor
    [1, N, 4(+1)+C] or [1, 4(+1)+C, N] with (cx, cy, w, h) in input pixels.
    """
    per = 4 + (1 if spec.objectness else 0) + num_classes
    if not spec.strides:
        t = outputs[0].reshape(-1, outputs[0].shape[-1]) if outputs[0].ndim == 2 else outputs[0][0]
        if t.shape[-1] != per and t.shape[0] == per:
            t = t.T
        cx, cy, w, h = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
        cls = t[:, 4 + int(spec.objectness) :]
        scores = cls * t[:, 4:5] if spec.objectness else cls
    else:
        boxes_l, scores_l = [], []
        for out, stride, anchors in zip(outputs, spec.strides, spec.grid_anchors, strict=True):
            na = len(anchors) // 2
            _, _, gh, gw = out.shape
            g = sigmoid(out.reshape(na, per, gh, gw).astype(np.float32))
            yy, xx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
            aw = np.asarray(anchors[0::2], np.float32)[:, None, None]
            ah = np.asarray(anchors[1::2], np.float32)[:, None, None]
            bx = (g[:, 0] * 2 - 0.5 + xx) * stride
            by = (g[:, 1] * 2 - 0.5 + yy) * stride
            bw = (g[:, 2] * 2) ** 2 * aw
            bh = (g[:, 3] * 2) ** 2 * ah
            boxes_l.append(np.stack([bx, by, bw, bh], -1).reshape(-1, 4))
            cls = g[:, 5:] * g[:, 4:5] if spec.objectness else g[:, 4:]
            scores_l.append(cls.transpose(0, 2, 3, 1).reshape(-1, num_classes))
        b = np.concatenate(boxes_l)
        cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        scores = np.concatenate(scores_l)
    boxes = np.stack(
        [
            (cx - w / 2) / input_w,
            (cy - h / 2) / input_h,
            (cx + w / 2) / input_w,
            (cy + h / 2) / input_h,
        ],
        1,
    )
    return boxes.astype(np.float32), np.asarray(scores, np.float32)


# --- NMS -------------------------------------------------------------------------------------


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with many."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-12))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int) -> list[int]:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_out:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(boxes[i], boxes[rest]) <= iou_threshold]
    return keep


def select(
    boxes: np.ndarray, scores: np.ndarray, spec: DetectionSpec, keypoints: np.ndarray | None = None
) -> list[Detection]:
    """Threshold, then class-wise NMS; detections sorted by score."""
    label = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), label]
    cand = np.nonzero(best >= spec.score_threshold)[0]
    dets: list[Detection] = []
    for c in np.unique(label[cand]):
        idx = cand[label[cand] == c]
        for j in nms(boxes[idx], best[idx], spec.iou_threshold, spec.max_detections):
            i = int(idx[j])
            kps = [(float(a), float(b)) for a, b in keypoints[i]] if keypoints is not None else []
            dets.append(Detection(tuple(float(v) for v in boxes[i]), int(c), float(best[i]), kps))  # type: ignore[arg-type]
    dets.sort(key=lambda d: -d.score)
    return dets[: spec.max_detections]


class Postprocessor:
    """Callable turning a model's raw outputs into a JSON-ready result dict."""

    def __init__(self, model: LoadedModel, top: int = 3) -> None:
        m = model.package.manifest
        self.manifest = m
        self.outputs = model.outputs
        self.top = top
        _n, _c, h, w = expected_shape(m, model.file) if model.layout == "NCHW" else _nhwc(m, model)
        self.input_w, self.input_h = w, h
        # A fused classifier (image/model/fuse.py) outputs (scores [1, K], indices [1, K]).
        self.fused_top = model.file.fused.top_k if model.file.fused is not None else 0
        self.anchors: np.ndarray | None = None
        self.raw_floor = -math.inf
        d = m.detection
        if m.task == "detection" and d is not None and d.decoder == "ssd" and d.anchors is not None:
            self.anchors = ssd_anchors(d.anchors, w, h)
            self.raw_floor = ssd_raw_floor(d)

    def scores(self, raw: list[np.ndarray]) -> np.ndarray:
        """Class scores of a classification model (batch of one; not for a fused top-k)."""
        return classify(dequantize(raw[0], self.outputs[0]), self.manifest.output.kind)

    def best(self, raw: list[np.ndarray]) -> int:
        """The top-1 class index of a classification model's outputs (batch of one)."""
        if self.fused_top:
            return int(raw[1].flat[0])
        return int(self.scores(raw).argmax())

    def __call__(
        self,
        raw: list[np.ndarray],
        box: Letterbox | None = None,
        frame_wh: tuple[int, int] | None = None,
    ) -> dict[str, object]:
        """Result dict; detection boxes mapped back to the frame if ``box``, ``frame_wh`` given."""
        m = self.manifest
        if m.task == "classification":
            if self.fused_top:  # softmax and top-k ran in the graph: only the k best are here
                labels, n = m.labels, len(m.labels)
                pairs = zip(
                    raw[0][0, : self.top].tolist(), raw[1][0, : self.top].tolist(), strict=True
                )
                return {
                    "top": [
                        {"label": labels[i] if i < n else str(i), "index": i, "score": round(x, 6)}
                        for x, i in pairs
                    ]
                }
            out = raw[0]
            if out.size <= SMALL:
                values = dequantize(out, self.outputs[0]).reshape(-1).tolist()
                return {"top": top_k_small(values, m.labels, self.top, m.output.kind)}
            v = dequantize(out, self.outputs[0]).reshape(-1)
            return {"top": top_k_large(v, m.labels, self.top, m.output.kind)}
        dets = self.detect(raw)
        if box is not None and frame_wh is not None:
            dets = [to_frame(d, box, self.input_w, self.input_h, frame_wh) for d in dets]
        return {"detections": [d.to_json(m.labels) for d in dets]}

    def detect(self, raw: list[np.ndarray]) -> list[Detection]:
        spec = self.manifest.detection
        assert spec is not None  # checked by check_manifest
        outs = [dequantize(o, i) for o, i in zip(raw, self.outputs, strict=True)]
        if spec.decoder == "ssd":
            assert self.anchors is not None
            n = len(self.anchors)
            raw_scores = outs[spec.scores_output].reshape(n, -1)
            # Decode only the anchors that can pass the threshold (usually a handful of
            # thousands): select() would drop the others anyway, and this keeps their order.
            # Compared on the raw scores (no sigmoid over every anchor); select() applies the
            # exact threshold to the survivors.
            # Array methods, not np.* functions: right after inference each Python-level numpy
            # wrapper costs ~30 us (np.flatnonzero: 85 us here, .nonzero(): 55 us).
            best_raw = raw_scores.reshape(-1) if raw_scores.shape[1] == 1 else raw_scores.max(1)
            rows = (best_raw >= self.raw_floor).nonzero()[0]
            if not rows.size:
                return []
            if rows.size <= MAX_ROWS:
                found = decode_select(
                    outs[spec.boxes_output].reshape(n, -1)[rows].tolist(),
                    raw_scores[rows].tolist(),
                    self.anchors[rows].tolist(),
                    spec,
                    self.input_w,
                    self.input_h,
                )
                return [Detection(box, c, score, kps) for box, c, score, kps in found]
            boxes, scores, kps = decode_ssd(
                outs[spec.boxes_output].reshape(n, -1)[rows],
                raw_scores[rows],
                self.anchors[rows],
                spec,
                input_w=self.input_w,
                input_h=self.input_h,
            )
            return select(boxes, scores, spec, kps if spec.num_keypoints else None)
        boxes, scores = decode_yolo(
            outs, spec, max(1, len(self.manifest.labels)), self.input_w, self.input_h
        )
        return select(boxes, scores, spec)


def to_frame(
    d: Detection, box: Letterbox, input_w: int, input_h: int, frame_wh: tuple[int, int]
) -> Detection:
    """Map a detection from normalised input-tensor space to normalised frame space."""
    fw, fh = frame_wh

    def fx(v: float) -> float:
        return (v * input_w - box.pad_x) / box.scale_x / fw

    def fy(v: float) -> float:
        return (v * input_h - box.pad_y) / box.scale_y / fh

    x0, y0, x1, y1 = d.box
    return Detection(
        (fx(x0), fy(y0), fx(x1), fy(y1)), d.label, d.score, [(fx(a), fy(b)) for a, b in d.keypoints]
    )


def _nhwc(m: Manifest, model: LoadedModel) -> tuple[int, int, int, int]:
    n, h, w, c = expected_shape(m, model.file)
    return n, c, h, w
