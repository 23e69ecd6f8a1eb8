"""SSD-style detection outputs: MediaPipe's anchors, box/keypoint decoding, score filtering.

Semantics of MediaPipe's SsdAnchorsCalculator and TensorsToDetectionsCalculator. Two decoders
with the same results: :func:`decode_ssd` (numpy, any number of anchors, followed by
``postprocess.select``) and :func:`decode_select` (plain Python, decode + class-wise NMS for
the handful of anchors left after :func:`ssd_raw_floor`'s pre-filter). Run right after
inference, each numpy call costs several times its warm price (cold caches), and ~40 of them
on a few rows cost more than the same arithmetic on Python floats.
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from appliance.inference.package import DetectionSpec, SsdAnchors

MAX_ROWS = 32  # up to this many anchors: decode_select; above: the numpy path
Box = tuple[float, float, float, float]
Found = tuple[Box, int, float, list[tuple[float, float]]]  # box, class, score, keypoints


def _scale(lo: float, hi: float, i: int, n: int) -> float:
    return (lo + hi) / 2 if n == 1 else lo + (hi - lo) * i / (n - 1)


def ssd_anchors(o: SsdAnchors, input_w: int, input_h: int) -> np.ndarray:
    """Anchors [N, 4] as (x_center, y_center, w, h), normalised; SsdAnchorsCalculator's order."""
    out: list[tuple[float, float, float, float]] = []
    layer = 0
    n = len(o.strides)
    while layer < o.num_layers:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < n and o.strides[last] == o.strides[layer]:
            scale = _scale(o.min_scale, o.max_scale, last, n)
            if last == 0 and o.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for r in o.aspect_ratios:
                    ratios.append(r)
                    scales.append(scale)
                if o.interpolated_scale_aspect_ratio > 0:
                    nxt = 1.0 if last == n - 1 else _scale(o.min_scale, o.max_scale, last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(o.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios, strict=True)]
        stride = o.strides[layer]
        fh, fw = math.ceil(input_h / stride), math.ceil(input_w / stride)
        for y in range(fh):
            for x in range(fw):
                for w, h in sizes:
                    cx, cy = (x + o.anchor_offset_x) / fw, (y + o.anchor_offset_y) / fh
                    out.append((cx, cy, 1.0, 1.0) if o.fixed_anchor_size else (cx, cy, w, h))
        layer = last
    return np.asarray(out, dtype=np.float32)


def decode_ssd(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    spec: DetectionSpec,
    *,
    input_w: int,
    input_h: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [N,4] xyxy, scores [N,C], keypoints [N,K,2]) from raw SSD tensors."""
    b = raw_boxes.reshape(len(anchors), -1).astype(np.float32)
    s = raw_scores.reshape(len(anchors), -1).astype(np.float32)
    xs, ys, ws, hs = spec.box_scale or [input_w, input_h, input_w, input_h]
    ax, ay, aw, ah = anchors.T
    if spec.reverse_output_order:  # (x, y, w, h)
        cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    else:  # (y, x, h, w)
        cy, cx, h, w = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    cx = cx / xs * aw + ax
    cy = cy / ys * ah + ay
    w = w / ws * aw
    h = h / hs * ah
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    k = spec.num_keypoints
    kp = b[:, 4 : 4 + 2 * k].reshape(-1, k, 2) if k else np.zeros((len(b), 0, 2), np.float32)
    if k:
        kp = np.stack(
            [
                kp[..., 0] / xs * aw[:, None] + ax[:, None],
                kp[..., 1] / ys * ah[:, None] + ay[:, None],
            ],
            -1,
        )
    return boxes, ssd_scores(s, spec), kp


def ssd_raw_floor(spec: DetectionSpec) -> float:
    """A raw score below which no anchor can reach the threshold (a cheap, safe pre-filter).

    :func:`ssd_scores` is monotonic, so ``score >= threshold`` needs ``raw >= threshold's
    pre-image``; a margin keeps rounding on the safe side (the exact test follows on the few
    rows that pass). Where clipping makes the bound unsafe, -inf: every row is kept.
    """
    t = spec.score_threshold
    if spec.sigmoid_score:
        # Scores are float32: near 1 a sigmoid rounds up to the threshold from below.
        t = min(t, 1.0) * (1 - 2**-20) - 2**-20
        if t <= 0:
            return -math.inf
        t = math.log(t / (1 - t))
    floor = t - 1e-3
    lowest = -80.0 if spec.sigmoid_score else -math.inf
    if spec.score_clipping is not None:
        lowest = max(lowest, -spec.score_clipping)
    return floor if floor > lowest else -math.inf


def ssd_scores(s: np.ndarray, spec: DetectionSpec) -> np.ndarray:
    """Raw SSD class scores [N, C] -> scores as the threshold sees them (clipped, sigmoid)."""
    if spec.score_clipping is not None:
        s = np.clip(s, -spec.score_clipping, spec.score_clipping)
    if spec.sigmoid_score:
        s = sigmoid(np.clip(s, -80.0, 80.0)).astype(np.float32)  # clip: no exp overflow
    return s


def sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0))))


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
    """Detections from a few anchors' raw rows (``.tolist()`` of the numpy rows), best first.

    Matches the numpy path: scores clipped, sigmoid, rounded to float32 before the threshold;
    class = first best; greedy NMS per class (ascending class, stable by score, kept while
    IoU <= threshold); best first overall.
    """
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
