"""Zero-copy frames: the pre-processor writes into the runtime's input, post reads its outputs.

``LoadedModel.run_frame`` on LiteRT (the interpreter's own tensors, guarded by its refusal to
run while a numpy view of them is alive) and OpenVINO (the infer request's tensors) must give
exactly what ``run`` on the pre-processor's own batch gives, for every pre-processing path, and
must leave the runtime usable whatever ``fill`` or ``read`` do. Real models: the reference
classifier (ONNX, FP32/INT8 TFLite) and mediapipe's pose detector on a real photo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.inference.backends import BackendOptions, LoadedModel, get_backend
from appliance.inference.errors import InferenceRunError
from appliance.inference.package import InputSpec, load_package
from appliance.inference.pipeline import Pipeline, PipelineConfig
from appliance.inference.postprocess import Postprocessor
from appliance.inference.preprocess import PAD, FramePreprocessor, Letterbox, Preprocessor
from appliance.inference.sink import Sink
from appliance.inference.sources import ArraySource
from tests.inference.fixtures import tflite_package
from tests.inference.tiny_tflite import tflite_classifier_package

REF = Path(__file__).resolve().parents[2] / "recipes" / "models" / "inspect-primary"


class Records(Sink):
    """Keeps what the pipeline publishes (results and events), in memory."""

    def __init__(self) -> None:
        self.items: list[dict[str, object]] = []

    def publish(self, record: dict[str, object]) -> None:
        self.items.append(record)

    def close(self) -> None:
        pass


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def both_ways(model: LoadedModel, image: np.ndarray, color: str, top: int = 3) -> tuple[Any, Any]:
    """(the result through run_frame, the same through run on the pre-processor's batch)."""
    pre, post = Preprocessor.for_model(model, reuse=True), Postprocessor(model, top)
    wh = (image.shape[1], image.shape[0])
    zero, _, _ = model.run_frame(
        lambda out: pre(image, color, out), lambda raw, box: post(raw, box, wh)
    )
    x, box = Preprocessor.for_model(model)(image, color)
    return zero, post(model.run(x), box, wh)


@pytest.fixture(scope="module")
def tflite_pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tflite_classifier_package(tmp_path_factory.mktemp("tflite"))


@pytest.mark.parametrize("file", ["model.tflite", "model_int8.tflite"])
@pytest.mark.parametrize(("size", "color"), [((8, 8), "RGB"), ((24, 40), "BGR"), ((33, 9), "RGB")])
def test_litert_run_frame_equals_run(
    tflite_pkg: Path, file: str, size: tuple[int, int], color: str
) -> None:
    model = get_backend("litert").load(load_package(tflite_pkg), file)
    for image in frames(4, *size, seed=len(file)):
        zero, copied = both_ways(model, image, color)
        assert zero == copied


@pytest.mark.parametrize("backend", ["litert", "openvino", "onnxruntime", "opencv"])
def test_reference_model_run_frame_equals_run(backend: str) -> None:
    model = get_backend(backend).load(load_package(REF), None, BackendOptions(threads=1))
    images, _ = load_package(REF).load_reference()
    for image in images[:8]:
        zero, copied = both_ways(model, image[..., ::-1].copy(), "BGR")
        assert zero == copied


def test_litert_views_never_outlive_a_frame(tflite_pkg: Path) -> None:
    """fill/read raising leave the interpreter usable; a read that keeps a view fails loudly."""
    model = get_backend("litert").load(load_package(tflite_pkg), "model.tflite")
    pre, post = Preprocessor.for_model(model), Postprocessor(model, 2)
    image = frames(1, 8, 8)[0]

    def fill(out: np.ndarray | None) -> tuple[np.ndarray, Letterbox]:
        return pre(image, "RGB", out)

    def read(raw: list[np.ndarray], box: Letterbox) -> dict[str, object]:
        return post(raw, box)

    want = post(model.run(pre(image, "RGB")[0]), None)
    for _ in range(3):
        assert model.run_frame(fill, read)[0] == want

    def bad_fill(out: np.ndarray | None) -> tuple[np.ndarray, Letterbox]:
        raise ValueError("camera frame is broken")

    def bad_read(raw: list[np.ndarray], box: Letterbox) -> dict[str, object]:
        raise ValueError("decoder bug")

    for f, r in ((bad_fill, read), (fill, bad_read)):
        with pytest.raises(ValueError, match=r"broken|bug"):
            model.run_frame(f, r)
        assert model.run_frame(fill, read)[0] == want

    kept = model.run_frame(fill, lambda raw, box: raw)[0]  # breaks the contract on purpose
    with pytest.raises(InferenceRunError, match="reference"):
        model.run_frame(fill, read)
    del kept
    assert model.run_frame(fill, read)[0] == want


@pytest.mark.parametrize("backend", ["litert", "openvino"])
def test_a_batch_of_its_own_is_copied_in(
    tflite_pkg: Path, tiny_package: Path, backend: str
) -> None:
    pkg = tflite_pkg if backend == "litert" else tiny_package
    model = get_backend(backend).load(load_package(pkg))
    pre, post = Preprocessor.for_model(model), Postprocessor(model, 2)
    image = frames(1, 16, 16, seed=3)[0]
    given: list[bool] = []

    def own(out: np.ndarray | None) -> tuple[np.ndarray, Letterbox]:
        given.append(out is not None)
        return pre(image, "RGB")  # ignores the runtime's buffer

    got = model.run_frame(own, post)[0]
    assert given == [True]
    assert got == post(model.run(pre(image, "RGB")[0]), None)


def test_openvino_run_converts_a_batch_of_another_dtype(tiny_package: Path) -> None:
    """A float64 batch is not written into the float32 tensor as is: OpenVINO converts it."""
    model = get_backend("openvino").load(load_package(tiny_package))
    x = np.random.default_rng(4).normal(size=(1, 3, 16, 16))
    want = model.run(x.astype(np.float32))[0]
    np.testing.assert_allclose(model.run(x)[0], want, rtol=1e-5, atol=1e-6)


SPECS = [
    ("NCHW", "float32", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # planes
    ("NHWC", "float32", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # 3x4 transform
    ("NHWC", "float32", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # one addWeighted
    ("NHWC", "uint8", [0.0] * 3, [1.0] * 3),  # table
    ("NHWC", "int8", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # table, bit patterns
]


@pytest.mark.parametrize(("layout", "dtype", "mean", "std"), SPECS)
@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("size", [(12, 12), (9, 20)])
def test_preprocessor_writes_into_a_given_buffer_exactly_as_into_its_own(
    layout: str, dtype: str, mean: list[float], std: list[float], resize: str, size: tuple[int, int]
) -> None:
    shape = (1, 3, 12, 12) if layout == "NCHW" else (1, 12, 12, 3)
    spec = InputSpec("x", list(shape), layout, dtype, "RGB", resize, 1 / 255, mean, std)  # type: ignore[arg-type]
    q = {"q_scale": 0.0187, "q_zero": -14} if dtype == "int8" else {}
    if dtype == "uint8":
        q = {"q_scale": 1 / 255, "q_zero": 0}
    pre = Preprocessor(spec, shape, layout, np.dtype(dtype), reuse=True, **q)  # type: ignore[arg-type]
    fresh = Preprocessor(spec, shape, layout, np.dtype(dtype), **q)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    out = rng.integers(0, 256, shape).astype(dtype)  # garbage: every element must be written
    for color in ("RGB", "BGR", "RGB"):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        got, box = pre(image, color, out)
        want, want_box = fresh(image, color)
        assert got is out and box == want_box
        np.testing.assert_array_equal(got, want)


def test_preprocessor_ignores_a_buffer_its_tensor_does_not_fit() -> None:
    spec = InputSpec("x", [1, 8, 8, 3], "NHWC", "float32", "RGB", "stretch", 1 / 255)
    pre = Preprocessor(spec, (1, 8, 8, 3), "NHWC", np.dtype(np.float32))
    image = frames(1, 8, 8)[0]
    for wrong in (np.zeros((1, 8, 8, 3), np.float64), np.zeros((1, 3, 8, 8), np.float32)):
        before = wrong.copy()
        got, _ = pre(image, "RGB", wrong)
        assert got is not wrong and np.array_equal(wrong, before)
        np.testing.assert_array_equal(got, pre(image, "RGB")[0])


@pytest.mark.parametrize("mode", ["stretch", "letterbox"])
@pytest.mark.parametrize("size", [(16, 16), (12, 30), (30, 12)])
@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_frame_preprocessor_writes_the_whole_buffer(
    mode: str, size: tuple[int, int], color: str
) -> None:
    """A fused file's uint8 frame in a runtime buffer: border rewritten, nothing stale left."""
    pre = FramePreprocessor(16, 16, mode, "RGB", reuse=True)
    rng = np.random.default_rng(6)
    out = rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    for _ in range(2):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        got, box = pre(image, color, out)
        want, want_box = FramePreprocessor(16, 16, mode, "RGB")(image, color)
        assert got is out and box == want_box
        np.testing.assert_array_equal(got, want)
        out[...] = rng.integers(0, 256, out.shape, dtype=np.uint8)  # the runtime scribbles
    if mode == "letterbox" and size != (16, 16):
        assert (want == PAD).any()  # the border was part of what was compared


@pytest.mark.slow
def test_pose_detector_through_the_pipeline_equals_the_copying_path(tmp_path: Path) -> None:
    """mediapipe's pose detector on 640x480 BGR frames of a real photo, zero-copy in the
    pipeline: the same detections as pre -> run -> post with copies, frame for frame."""
    import cv2
    import matplotlib

    from tests.inference.mediapipe import tflite_models
    from tests.inference.test_mediapipe import POSE

    photo = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    base = cv2.resize(photo, (680, 520))
    shots = np.stack([base[i * 7 : i * 7 + 480, i * 5 : i * 5 + 640] for i in range(6)])
    pkg = tflite_package(
        tmp_path / "pose",
        tflite_models()["pose_detection"],
        224,
        224,
        "detection",
        POSE,
        ["person"],
    )
    sink = Records()
    cfg = PipelineConfig(model=str(pkg), source="array:", backends=["litert"], top_k=1)
    Pipeline(cfg, sink=sink, source=ArraySource("array:", shots, "BGR")).run()
    results = [r for r in sink.items if r["type"] == "result"]
    assert len(results) == len(shots) and not any(r.get("degraded") for r in results)

    model = get_backend("litert").load(load_package(pkg))
    pre, post = Preprocessor.for_model(model), Postprocessor(model, 1)
    found = 0
    for shot, r in zip(shots, results, strict=True):
        x, box = pre(shot, "BGR")
        want = post(model.run(x), box, (640, 480))
        assert r["detections"] == want["detections"]
        found += len(want["detections"])  # type: ignore[arg-type]
    assert found >= len(shots) // 2  # detections were compared, not only empty lists
