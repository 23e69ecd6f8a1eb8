"""SSD decode + class-wise NMS for a handful of anchors, in plain Python.

After the raw-score pre-filter usually only a few of thousands of anchors remain. The numpy path
(:func:`~appliance.inference.postprocess.decode_ssd` + ``select``) spends ~40 numpy calls on
them, and right after inference each call runs with cold caches (several times its warm
cost); this does the same arithmetic on Python floats. Semantics match the numpy path: scores
clipped, sigmoid, rounded to float32 before the threshold; class = first best; greedy NMS per
class (ascending class, stable by score, kept while IoU <= threshold); best first overall.
"""

from __future__ import annotations

import math
from array import array

from appliance.inference.package import DetectionSpec

MAX_ROWS = 32  # above this the numpy path wins
Box = tuple[float, float, float, float]
Found = tuple[Box, int, float, list[tuple[float, float]]]  # box, class, score, keypoints


def _f32(x: float) -> float:
    """``x`` rounded to float32, as the numpy path's float32 scores are."""
    return array("f", (x,))[0]


def _scores(raw: list[float], spec: DetectionSpec) -> list[float]:
    clip = spec.score_clipping
    out = []
    for v in raw:
        x = v if clip is None else min(max(v, -clip), clip)
        if spec.sigmoid_score:
            x = 1.0 / (1.0 + math.exp(-min(max(x, -80.0), 80.0)))
        out.append(_f32(x))
    return out


def _iou(a: Box, b: Box) -> float:
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-12)


def decode_select(
    raw_boxes: list[list[float]],
    raw_scores: list[list[float]],
    anchors: list[list[float]],
    spec: DetectionSpec,
    input_w: int,
    input_h: int,
) -> list[Found]:
    """Detections from a few anchors' raw rows (``.tolist()`` of the numpy rows), best first."""
    xs, ys, ws, hs = spec.box_scale or [input_w, input_h, input_w, input_h]
    k = spec.num_keypoints
    by_class: dict[int, list[Found]] = {}
    for b, s, (ax, ay, aw, ah) in zip(raw_boxes, raw_scores, anchors, strict=True):
        scores = _scores(s, spec)
        label = max(range(len(scores)), key=scores.__getitem__)  # the first best, like argmax
        best = scores[label]
        if not best >= spec.score_threshold:
            continue
        if spec.reverse_output_order:  # (x, y, w, h)
            cx, cy, w, h = b[0], b[1], b[2], b[3]
        else:  # (y, x, h, w)
            cy, cx, h, w = b[0], b[1], b[2], b[3]
        cx, cy = cx / xs * aw + ax, cy / ys * ah + ay
        w, h = w / ws * aw, h / hs * ah
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        kps = [(b[4 + 2 * j] / xs * aw + ax, b[5 + 2 * j] / ys * ah + ay) for j in range(k)]
        by_class.setdefault(label, []).append((box, label, best, kps))
    found: list[Found] = []
    for label in sorted(by_class):
        order = sorted(by_class[label], key=lambda d: -d[2])  # stable: ties keep anchor order
        kept: list[Found] = []
        while order and len(kept) < spec.max_detections:
            top = order[0]
            kept.append(top)
            order = [d for d in order[1:] if _iou(top[0], d[0]) <= spec.iou_threshold]
        found += kept
    found.sort(key=lambda d: -d[2])
    return found[: spec.max_detections]
