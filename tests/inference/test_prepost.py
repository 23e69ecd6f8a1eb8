"""Pre-processing (LUT normalisation, quantisation, letterbox, colour) and decoders + NMS."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.package import DetectionSpec, InputSpec
from appliance.inference.postprocess import decode_yolo, nms, select, softmax, top_k
from appliance.inference.preprocess import Preprocessor, build_lut, resize

SPEC = InputSpec(
    "input",
    [1, 3, 8, 8],
    "NCHW",
    "float32",
    "RGB",
    "stretch",
    1 / 255,
    [0.485, 0.456, 0.406],
    [0.229, 0.224, 0.225],
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_float_preprocessing_equals_the_formula(seed: int) -> None:
    img = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x, _ = Preprocessor(SPEC, (1, 3, 8, 8), "NCHW", np.dtype(np.float32))(img, "RGB")
    want = ((img / 255 - np.array(SPEC.mean)) / np.array(SPEC.std)).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
    bgr, _ = Preprocessor(SPEC, (1, 3, 8, 8), "NCHW", np.dtype(np.float32))(img[..., ::-1], "BGR")
    np.testing.assert_array_equal(bgr, x)


@pytest.mark.parametrize(
    ("dtype", "scale", "zero"),
    [("uint8", 1 / 255, 0), ("int8", 0.0187, -14), ("uint8", 0.0186584, 114)],
)
def test_quantised_inputs_use_scale_and_zero_point(dtype: str, scale: float, zero: int) -> None:
    lut = build_lut(SPEC, np.dtype(dtype), scale, zero)
    p = np.arange(256)
    for c in range(3):
        real = (p / 255 - SPEC.mean[c]) / SPEC.std[c]
        info = np.iinfo(dtype)
        want = np.clip(np.round(real / scale + zero), info.min, info.max)
        np.testing.assert_array_equal(lut[c], want)
    assert lut.dtype == np.dtype(dtype)


def test_nhwc_uint8_identity_for_raw_pixel_models() -> None:
    spec = InputSpec("x", [1, 4, 4, 3], "NHWC", "uint8", "RGB", scale=1 / 255)
    img = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    x, _ = Preprocessor(spec, (1, 4, 4, 3), "NHWC", np.dtype(np.uint8), q_scale=1 / 255, q_zero=0)(
        img
    )
    np.testing.assert_array_equal(x[0], img)


def test_letterbox_keeps_aspect_and_reports_padding() -> None:
    img = np.full((50, 100, 3), 200, np.uint8)
    out, box = resize(img, 64, 64, "letterbox")
    assert out.shape == (64, 64, 3)
    assert box.scale_x == box.scale_y == pytest.approx(0.64) and box.pad_x == 0 and box.pad_y == 16
    assert (out[:16] == 114).all() and (out[17:47] == 200).all()
    stretched, sbox = resize(img, 64, 64, "stretch")
    assert (
        (stretched == 200).all()
        and sbox.scale_x == pytest.approx(0.64)
        and sbox.scale_y == pytest.approx(1.28)
    )


def test_top_k_and_softmax() -> None:
    scores = softmax(np.array([1.0, 3.0, 2.0, 0.0]))
    assert scores.sum() == pytest.approx(1.0)
    top = top_k(scores, ["a", "b", "c", "d"], 2)
    assert [t["label"] for t in top] == ["b", "c"]


def test_nms_keeps_best_of_overlaps() -> None:
    boxes = np.array([[0, 0, 1, 1], [0.05, 0, 1.05, 1], [2, 2, 3, 3]], np.float32)
    assert nms(boxes, np.array([0.9, 0.95, 0.5]), 0.5, 10) == [1, 2]
    assert nms(boxes, np.array([0.9, 0.95, 0.5]), 0.5, 1) == [1]


def _grid_with_one_box(classes: int = 2) -> np.ndarray:
    out = np.full((1, 1 * (5 + classes), 4, 4), -20.0, np.float32)  # 1 anchor, 4x4 cells, stride 8
    out[0, 0:4, 1, 2] = 0.0  # tx = ty = tw = th = 0 at row 1, column 2
    out[0, 4, 1, 2] = 8.0  # objectness
    out[0, 5 + 1, 1, 2] = 8.0  # class 1
    return out


def test_yolo_grid_decode() -> None:
    spec = DetectionSpec("yolo", score_threshold=0.5, strides=[8], grid_anchors=[[16.0, 16.0]])
    boxes, scores = decode_yolo([_grid_with_one_box()], spec, 2, 32, 32)
    dets = select(boxes, scores, spec)
    assert len(dets) == 1 and dets[0].label == 1
    # x = (2*0.5 - 0.5 + 2) * 8 = 20, y = (0.5 + 1) * 8 = 12, w = h = (2*0.5)^2 * 16 = 16.
    np.testing.assert_allclose(dets[0].box, [12 / 32, 4 / 32, 28 / 32, 20 / 32], atol=1e-6)


def test_yolo_decoded_ultralytics_layout() -> None:
    # [1, 4 + C, N]: (cx, cy, w, h) in pixels, class scores, no objectness (YOLOv8 export).
    n = 5
    t = np.zeros((1, 4 + 3, n), np.float32)
    t[0, :4, 2] = [32, 32, 20, 10]
    t[0, 4 + 2, 2] = 0.9
    t[0, :4, 3] = [33, 32, 20, 10]  # duplicate, lower score: suppressed by NMS
    t[0, 4 + 2, 3] = 0.8
    spec = DetectionSpec("yolo", score_threshold=0.5, objectness=False)
    boxes, scores = decode_yolo([t], spec, 3, 64, 64)
    dets = select(boxes, scores, spec)
    assert len(dets) == 1 and dets[0].label == 2 and dets[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(dets[0].box, [22 / 64, 27 / 64, 42 / 64, 37 / 64])


@pytest.mark.parametrize(
    ("layout", "dtype"), [("NHWC", "uint8"), ("NHWC", "int8"), ("NCHW", "uint8")]
)
def test_quantised_fast_path_equals_lut(layout: str, dtype: str) -> None:
    img = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    shape = (1, 8, 8, 3) if layout == "NHWC" else (1, 3, 8, 8)
    pre = Preprocessor(
        SPEC, shape, layout, np.dtype(dtype), q_scale=0.02, q_zero=-3 if dtype == "int8" else 120
    )
    x, _ = pre(img[..., ::-1], "BGR")
    want = np.stack([pre.lut[c][img[..., c]] for c in range(3)], -1)
    if layout == "NCHW":
        want = want.transpose(2, 0, 1)
    assert x.dtype == np.dtype(dtype) and x.shape == shape
    np.testing.assert_array_equal(x[0], want)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=64), st.integers(1, 5))
def test_small_top_k_equals_numpy_top_k(values: list[float], k: int) -> None:
    from appliance.inference.postprocess import top_k_small

    labels = [f"c{i}" for i in range(len(values))]
    arr = np.asarray(values, np.float32)
    small = top_k_small(arr.tolist(), labels, k, "logits")
    big = top_k(softmax(arr.astype(np.float64)), labels, k)
    # Tied classes may come in another order, but the scores (sorted) must be the same.
    assert [d["score"] for d in small] == pytest.approx([d["score"] for d in big], abs=2e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=300),
    st.integers(1, 5),
    st.sampled_from(["logits", "probabilities"]),
)
def test_large_top_k_equals_numpy_top_k(values: list[float], k: int, kind: str) -> None:
    from appliance.inference.postprocess import top_k_large

    labels = [f"c{i}" for i in range(len(values))]
    arr = np.asarray(values, np.float32)
    fast = top_k_large(arr, labels, k, kind)
    ref = top_k(softmax(arr.astype(np.float64)) if kind == "logits" else arr, labels, k)
    assert [d["score"] for d in fast] == pytest.approx([d["score"] for d in ref], abs=2e-6)
    # Same classes up to ties: every picked class scores the same as the reference's pick.
    assert len(fast) == len(ref) == min(k, len(values))


NHWC_UNIFORM = InputSpec(
    "input", [1, 32, 32, 3], "NHWC", "float32", "RGB", "letterbox", 1 / 127.5, [1.0] * 3, [1.0] * 3
)


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (SPEC, (1, 3, 8, 8)),  # NCHW: split into planes, one fused pass per plane
        (NHWC_UNIFORM, (1, 32, 32, 3)),  # NHWC letterboxed, one a/b: one fused pass
        (msgspec.structs.replace(NHWC_UNIFORM, resize="stretch"), (1, 32, 32, 3)),
        # NHWC, one a/b per channel: one conversion + one cv2.transform (colour order folded in)
        (msgspec.structs.replace(SPEC, shape=[1, 8, 8, 3], layout="NHWC"), (1, 8, 8, 3)),
        (msgspec.structs.replace(NHWC_UNIFORM, mean=[0.5, 0.4, 0.3]), (1, 32, 32, 3)),
    ],
)
def test_opencv_fused_paths_equal_the_numpy_path_with_a_reused_buffer(
    spec: InputSpec, shape: tuple[int, int, int, int]
) -> None:
    layout = "NCHW" if shape[1] == 3 else "NHWC"
    fused = Preprocessor(spec, shape, layout, np.dtype(np.float32), reuse=True)
    rng = np.random.default_rng(3)
    # Frame sizes change midway (the letterbox border must follow), then return.
    sizes = [(8, 8), (20, 40), (20, 40), (40, 20), (32, 32), (40, 20), (20, 40)]
    previous = None
    for h, w in sizes:
        for color in ("RGB", "BGR"):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            x, box = fused(img, color)
            want, want_box = fused._numpy(img, color)
            assert x.shape == shape and x.dtype == np.float32 and box == want_box
            np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
            if previous is not None:
                assert x is previous  # the same buffer every frame
            previous = x
    fresh = Preprocessor(spec, shape, layout, np.dtype(np.float32))
    img = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    assert fresh(img)[0] is not fresh(img)[0]  # without reuse: a new tensor per call


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=50),
    st.floats(0.0, 1.0),
    st.booleans(),
    st.one_of(st.none(), st.floats(0.5, 100)),
)
def test_ssd_raw_floor_never_drops_an_anchor_that_passes(
    raw: list[float], threshold: float, sigmoid: bool, clipping: float | None
) -> None:
    from appliance.inference.ssd import ssd_raw_floor, ssd_scores

    spec = DetectionSpec(
        decoder="ssd", score_threshold=threshold, sigmoid_score=sigmoid, score_clipping=clipping
    )
    s = np.asarray(raw, np.float32)[:, None]
    passing = ssd_scores(s, spec)[:, 0] >= threshold
    assert not (passing & (s[:, 0] < ssd_raw_floor(spec))).any()


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 32),
    st.integers(1, 3),
    st.integers(0, 2),
    st.booleans(),
    st.floats(0.05, 0.95),
)
def test_few_anchor_python_decode_equals_the_numpy_decode(
    seed: int, rows: int, classes: int, keypoints: int, xywh: bool, threshold: float
) -> None:
    from appliance.inference.ssd import decode_select, decode_ssd

    rng = np.random.default_rng(seed)
    spec = DetectionSpec(
        decoder="ssd",
        score_threshold=threshold,
        iou_threshold=0.3,
        max_detections=5,
        num_keypoints=keypoints,
        reverse_output_order=xywh,
    )
    raw_boxes = rng.normal(0, 20, (rows, 4 + 2 * keypoints)).astype(np.float32)
    raw_scores = rng.normal(0, 2, (rows, classes)).astype(np.float32)
    anchors = np.concatenate([rng.uniform(0, 1, (rows, 2)), np.ones((rows, 2))], axis=1).astype(
        np.float32
    )
    boxes, scores, kps = decode_ssd(raw_boxes, raw_scores, anchors, spec, input_w=64, input_h=48)
    if np.isclose(scores, threshold, atol=1e-6).any():
        return  # float32 vs float64 sigmoid may round a borderline score either way
    want = select(boxes, scores, spec, kps if keypoints else None)
    got = decode_select(raw_boxes.tolist(), raw_scores.tolist(), anchors.tolist(), spec, 64, 48)
    assert [d.label for d in want] == [c for _, c, _, _ in got]
    assert [d.score for d in want] == pytest.approx([s for _, _, s, _ in got], abs=1e-6)
    for d, (box, _, _, points) in zip(want, got, strict=True):
        np.testing.assert_allclose(d.box, box, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.reshape(d.keypoints, (-1, 2)), np.reshape(points, (-1, 2)),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
