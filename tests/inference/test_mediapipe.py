"""Real third-party TFLite models (the mediapipe 0.10.14 wheel) through our LiteRT path.

* raw outputs of our back end == the bare ai_edge_litert interpreter, bit for bit, for every
  model in the wheel (the one needing a custom op must fail with a clear BackendLoadError);
* face and pose detection (SSD-style) decoded by our anchors + decode + NMS on a real photo
  (Grace Hopper, shipped with matplotlib): one face, landmarks where a face has them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.inference.backends import get_backend
from appliance.inference.errors import BackendLoadError
from appliance.inference.package import load_package
from appliance.inference.postprocess import Postprocessor
from appliance.inference.preprocess import Preprocessor
from appliance.inference.ssd import ssd_anchors
from tests.inference.fixtures import tflite_package
from tests.inference.mediapipe import tflite_models

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MODELS = [
    "face_detection_full_range_sparse",
    "face_detection_short_range",
    "face_landmark",
    "face_landmark_with_attention",
    "hand_landmark_full",
    "hand_landmark_lite",
    "hand_recrop",
    "iris_landmark",
    "palm_detection_full",
    "palm_detection_lite",
    "pose_detection",
    "pose_landmark_full",
    "selfie_segmentation",
    "selfie_segmentation_landscape",
]
NEEDS_CUSTOM_OP = {"face_landmark_with_attention"}
# MediaPipe's graph options (face_detection_short_range.pbtxt, pose_detection_cpu.pbtxt).
FACE = {
    "decoder": "ssd",
    "score_threshold": 0.5,
    "iou_threshold": 0.3,
    "num_keypoints": 6,
    "score_clipping": 100.0,
    "anchors": {
        "num_layers": 4,
        "min_scale": 0.1484375,
        "max_scale": 0.75,
        "strides": [8, 16, 16, 16],
    },
}
POSE = {
    "decoder": "ssd",
    "score_threshold": 0.5,
    "iou_threshold": 0.3,
    "num_keypoints": 4,
    "score_clipping": 100.0,
    "anchors": {
        "num_layers": 5,
        "min_scale": 0.1484375,
        "max_scale": 0.75,
        "strides": [8, 16, 32, 32, 32],
    },
}


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    found = tflite_models()
    assert set(MODELS) <= set(found), sorted(found)
    return found


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import cv2
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = cv2.imread(str(path))
    assert image is not None
    return np.asarray(image)


@pytest.mark.parametrize("name", MODELS)
def test_litert_path_matches_bare_interpreter(
    models: dict[str, Path], name: str, tmp_path: Path
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    probe = Interpreter(model_path=str(models[name]), num_threads=1)
    if name in NEEDS_CUSTOM_OP:
        with pytest.raises(BackendLoadError, match="custom op"):
            pkg = tflite_package(tmp_path / name, models[name], 192, 192)
            get_backend("litert").load(load_package(pkg))
        return
    probe.allocate_tensors()
    _, h, w, _ = probe.get_input_details()[0]["shape"]
    pkg = tflite_package(tmp_path / name, models[name], int(h), int(w))
    ours = get_backend("litert").load(load_package(pkg))
    x = np.random.default_rng(0).uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    probe.set_tensor(probe.get_input_details()[0]["index"], x)
    probe.invoke()
    bare = [probe.get_tensor(d["index"]) for d in probe.get_output_details()]
    got = ours.run(x)
    assert len(got) == len(bare)
    for a, b in zip(got, bare, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


def test_ssd_anchor_counts_match_mediapipe() -> None:
    from appliance.inference.package import SsdAnchors

    face = ssd_anchors(SsdAnchors(4, 0.1484375, 0.75, [8, 16, 16, 16]), 128, 128)
    pose = ssd_anchors(SsdAnchors(5, 0.1484375, 0.75, [8, 16, 32, 32, 32]), 224, 224)
    assert face.shape == (896, 4) and pose.shape == (2254, 4)
    # First cell of the 16x16 layer holds 2 anchors (aspect 1 + interpolated), centred at 0.5/16.
    np.testing.assert_allclose(face[:2, :2], [[1 / 32, 1 / 32]] * 2)
    # The 8x8 layers (three strides of 16) hold 6 anchors per cell, starting after 16*16*2.
    np.testing.assert_allclose(face[512:518, :2], [[1 / 16, 1 / 16]] * 6)
    np.testing.assert_allclose(face[-1, :2], [15 / 16, 15 / 16])


def _detect(
    models: dict[str, Path],
    tmp_path: Path,
    name: str,
    size: int,
    spec: dict[str, Any],
    photo: np.ndarray,
) -> list[dict[str, Any]]:
    label = "face" if name.startswith("face") else "person"
    pkg = load_package(
        tflite_package(tmp_path / name, models[name], size, size, "detection", spec, [label])
    )
    model = get_backend("litert").load(pkg)
    pre, post = Preprocessor.for_model(model), Postprocessor(model)
    x, box = pre(photo, "BGR")
    raw = model.run(x)
    h, w = photo.shape[:2]
    result = post(raw, box, (w, h))
    # Independent check of the decode for the best anchor, straight from MediaPipe's formulas.
    anchors = post.anchors
    assert anchors is not None
    scores, boxes = raw[1].reshape(-1), raw[0].reshape(len(anchors), -1)
    i = int(scores.argmax())
    ax, ay, aw, ah = anchors[i]
    cx, cy = boxes[i, 0] / size * aw + ax, boxes[i, 1] / size * ah + ay
    bw, bh = boxes[i, 2] / size * aw, boxes[i, 3] / size * ah
    best = post.detect(raw)[0]
    np.testing.assert_allclose(
        best.box, [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], rtol=1e-5
    )
    assert best.score == pytest.approx(1 / (1 + np.exp(-scores[i])), rel=1e-5)
    dets: list[dict[str, Any]] = result["detections"]  # type: ignore[assignment]
    return dets


def test_face_detection_finds_the_face(
    models: dict[str, Path], photo: np.ndarray, tmp_path: Path
) -> None:
    dets = _detect(models, tmp_path, "face_detection_short_range", 128, FACE, photo)
    assert len(dets) == 1, dets  # one person in the photo; NMS merged the overlapping anchors
    face = dets[0]
    assert face["label"] == "face" and face["score"] > 0.8
    x0, y0, x1, y1 = face["box"]
    assert 0 < x0 < x1 < 1 and 0 < y0 < y1 < 1
    assert 0.15 < (x1 - x0) < 0.6  # a portrait: the face is a good part of the frame
    right_eye, left_eye, nose, mouth = face["keypoints"][:4]
    for kx, ky in (right_eye, left_eye, nose, mouth):
        assert x0 <= kx <= x1 and y0 <= ky <= y1
    assert right_eye[0] < left_eye[0]  # subject's right eye is on the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]  # eyes above nose above mouth


def test_pose_detection_decodes(models: dict[str, Path], photo: np.ndarray, tmp_path: Path) -> None:
    dets = _detect(models, tmp_path, "pose_detection", 224, POSE, photo)
    assert 1 <= len(dets) <= 2, dets
    assert all(len(d["keypoints"]) == 4 and d["score"] >= 0.5 for d in dets)


def test_detector_on_an_empty_scene_gives_no_detections(
    models: dict[str, Path], tmp_path: Path
) -> None:
    pkg = load_package(
        tflite_package(
            tmp_path / "f",
            models["face_detection_short_range"],
            128,
            128,
            "detection",
            FACE,
            ["face"],
        )
    )
    model = get_backend("litert").load(pkg)
    pre, post = Preprocessor.for_model(model), Postprocessor(model)
    grey = np.full((240, 320, 3), 128, np.uint8)
    x, box = pre(grey, "BGR")
    assert post(model.run(x), box, (320, 240)) == {"detections": []}


# ai_edge_litert's Delegate.__del__ trips over its own failed load (no _library attribute).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_edgetpu_without_library_falls_back_to_cpu_tflite(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """No Coral and no libedgetpu here: the pipeline tries the Edge TPU file first (no
    ``model_file`` needed), says why it is not used in an alert, and runs the CPU file."""
    import json

    from appliance.inference.pipeline import Pipeline, PipelineConfig
    from appliance.inference.sources import ArraySource
    from tests.inference.fixtures import sha256

    pkg = tflite_package(
        tmp_path / "coral",
        models["face_detection_short_range"],
        128,
        128,
        "detection",
        FACE,
        ["face"],
    )
    data = (pkg / "model.tflite").read_bytes()
    (pkg / "model_edgetpu.tflite").write_bytes(data)
    m = json.loads((pkg / "model.json").read_text())
    m["files"].append(
        {
            "path": "model_edgetpu.tflite",
            "format": "edgetpu-tflite",
            "precision": "int8",
            "sha256": sha256(data),
            "quantization": {
                "input_scale": 0.0078125,
                "input_zero_point": 128,
                "input_dtype": "uint8",
            },
        }
    )
    (pkg / "model.json").write_text(json.dumps(m))
    frames = ArraySource("test", np.zeros((3, 128, 128, 3), np.uint8))
    cfg = PipelineConfig(model=str(pkg), source="test", backends=["litert"])
    pipe = Pipeline(cfg, source=frames)
    stats = pipe.run()
    first, second = pipe.events[0], pipe.events[1]
    assert first.kind == "fallback" and first.alert
    assert "model_edgetpu.tflite not used" in first.reason
    # This host's sysfs shows no Edge TPU; with one, the missing library is the reason.
    assert (
        "no Edge TPU found" in first.reason
        or "Edge TPU delegate libedgetpu.so.1 could not be loaded" in first.reason
    )
    assert second.kind == "loaded" and "model.tflite on litert (CPU" in second.reason
    assert stats.frames == 3 and stats.degraded_frames == 0
