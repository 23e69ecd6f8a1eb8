"""The pipeline on real sources (ffmpeg-made video, a live HTTP MJPEG stream, an image folder),
latest-frame semantics, a camera that disappears, the fallback chain and degraded mode."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.inference.chain import Event
from appliance.inference.errors import SourceError
from appliance.inference.pipeline import Pipeline, PipelineConfig
from tests.inference.fixtures import make_package, rewrite_manifest

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")


def _ffmpeg_video(path: Path, size: str, rate: int, seconds: float) -> Path:
    subprocess.run(
        [
            str(FFMPEG),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc=size={size}:rate={rate}",
            "-t",
            str(seconds),
            "-c:v",
            "mjpeg",
            "-q:v",
            "3",
            str(path),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_ffmpeg
@pytest.mark.integration
def test_video_file_every_frame_to_jsonl(tiny_package: Path, tmp_path: Path) -> None:
    video = _ffmpeg_video(tmp_path / "cam.avi", "64x48", 25, 2)
    sink = tmp_path / "data" / "results.jsonl"
    stats = Pipeline(
        PipelineConfig(model=str(tiny_package), source=str(video), sink=str(sink))
    ).run()
    assert stats.frames == 50 and stats.degraded_frames == 0 and stats.dropped == 0
    lines = _lines(sink)
    # budget_exceeded may appear on a loaded machine: wall-clock figures are not asserted.
    events = [x for x in lines if x["type"] == "event" and x["kind"] != "budget_exceeded"]
    results = [x for x in lines if x["type"] == "result"]
    assert [e["kind"] for e in events] == ["loaded"]
    assert [r["frame"] for r in results] == list(range(50))
    r = results[0]
    assert r["model"] == "tiny" and r["backend"] == "onnxruntime" and r["degraded"] is False
    assert set(r["ms"]) >= {"capture", "pre", "infer", "post"}
    assert len(r["top"]) == 3


class _DescribedCamera:
    """A source that says what it negotiated, as ``V4L2Source.description`` does."""

    live = False
    uri = "v4l2:///dev/video7"
    description = "v4l2:///dev/video7: /dev/video7 64x48 YUYV at 5 frames/s (linuxpy, numpy)"

    def __init__(self, images: np.ndarray) -> None:
        from appliance.inference.sources import ArraySource

        self._frames = ArraySource(self.uri, images)

    def read(self) -> Any:
        return self._frames.read()

    def close(self) -> None:
        self._frames.close()


def test_a_camera_that_describes_itself_is_named_before_its_results(
    tiny_package: Path, tmp_path: Path
) -> None:
    """``source_opened`` carries the camera's description (format, rate, converter) once, after
    the model loaded and before the first result; sources without one add no event."""
    sink = tmp_path / "out.jsonl"
    images = np.zeros((3, 48, 64, 3), np.uint8)
    cfg = PipelineConfig(model=str(tiny_package), source="v4l2:///dev/video7", sink=str(sink))
    Pipeline(cfg, source=_DescribedCamera(images)).run()  # type: ignore[arg-type]
    lines = [x for x in _lines(sink) if x.get("kind") != "budget_exceeded"]
    assert [x.get("kind", x["type"]) for x in lines] == ["loaded", "source_opened", *["result"] * 3]
    assert lines[1]["reason"] == _DescribedCamera.description and lines[1]["alert"] is False


def test_image_folder_skips_unreadable_files(tiny_package: Path, tmp_path: Path) -> None:
    import cv2

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((20, 30, 3), i * 60, np.uint8))
    (folder / "3.jpg").write_bytes(b"not a jpeg")
    seen: list[dict[str, object]] = []
    stats = Pipeline(PipelineConfig(model=str(tiny_package), source=str(folder))).run(
        on_frame=seen.append
    )
    assert stats.frames == 3 and [r["frame"] for r in seen] == [0, 1, 2]


def test_missing_local_source_is_a_config_error(tiny_package: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file, folder, device or stream URL"):
        Pipeline(PipelineConfig(model=str(tiny_package), source=str(tmp_path / "nope.mp4"))).run()


@needs_ffmpeg
@pytest.mark.integration
@pytest.mark.slow
def test_latest_frame_semantics_with_a_source_faster_than_the_model(tmp_path: Path) -> None:
    # ~15 ms model against a 250 fps camera (a video file paced in real time).
    slow = make_package(tmp_path / "slow", size=64, count=2, width=48, extra_convs=6)
    video = _ffmpeg_video(tmp_path / "fast.avi", "64x64", 250, 2)
    seen: list[int] = []
    pipe = Pipeline(PipelineConfig(model=str(slow), source=f"{video}?realtime=1"))
    stats = pipe.run(on_frame=lambda r: seen.append(int(r["frame"])))  # type: ignore[call-overload]
    assert stats.frames == len(seen) and stats.dropped > 0
    assert seen == sorted(set(seen))  # never a frame twice, never out of order
    assert stats.frames + stats.dropped <= 500
    assert max(np.diff(seen)) > 1  # frames were skipped, not queued
    # No backlog: processing stopped when the camera stopped, not minutes later.
    assert seen[-1] >= 490


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_mjpeg(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(FFMPEG),
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x48:rate=30",
            "-t",
            "60",
            "-c:v",
            "mjpeg",
            "-q:v",
            "5",
            "-f",
            "mpjpeg",
            "-listen",
            "1",
            f"http://127.0.0.1:{port}/cam",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _wait(cond: object, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@needs_ffmpeg
@pytest.mark.integration
@pytest.mark.slow
def test_live_stream_camera_disappears_and_comes_back(
    tiny_package: Path, tmp_path: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    port = _free_port()  # nothing listens yet: the camera is not there at start
    sink = tmp_path / "r.jsonl"
    cfg = PipelineConfig(
        model=str(tiny_package), source=f"http://127.0.0.1:{port}/cam", sink=str(sink)
    )
    pipe = Pipeline(cfg)
    frames: list[dict[str, object]] = []
    events: list[Event] = []
    stop = threading.Event()
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["stats"] = pipe.run(stop, on_frame=frames.append, on_event=events.append)
        except BaseException as exc:  # the test fails below if run() ever raises
            result["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    try:
        assert _wait(lambda: any(e.kind == "source_lost" for e in events))
        servers.append(_serve_mjpeg(port))  # the camera is plugged in
        assert _wait(lambda: len(frames) >= 10, 30), "no frames from the live stream"
        events.clear()
        servers[0].kill()  # the camera disappears mid-stream
        assert _wait(lambda: any(e.kind == "source_lost" for e in events))
        n = len(frames)
        servers.append(_serve_mjpeg(port))  # ... and comes back
        assert _wait(lambda: any(e.kind == "source_reopened" for e in events), 30)
        assert _wait(lambda: len(frames) >= n + 10)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive() and "error" not in result
    kinds = [e.kind for e in events]
    assert kinds.index("source_lost") < kinds.index("source_reopened")
    assert pipe.events[0].kind == "loaded" and pipe.events[1].kind == "source_lost"
    lost = next(e for e in events if e.kind == "source_lost")
    assert lost.alert and f"127.0.0.1:{port}" in lost.reason
    assert any(x["kind"] == "source_lost" for x in _lines(sink) if x["type"] == "event")


def _damage(pkg: Path) -> None:
    with (pkg / "model.onnx").open("r+b") as fh:
        fh.seek(50)
        fh.write(b"\x00\x01")


def test_fallback_chain_records_each_step(tmp_path: Path) -> None:
    primary = make_package(tmp_path / "primary")
    fallback = make_package(tmp_path / "fallback", seed=3)
    rewrite_manifest(fallback, name="tiny-fallback")
    _damage(primary)
    cfg = PipelineConfig(
        model=str(primary),
        fallback_model=str(fallback),
        source=f"npz:{primary}/reference.npz",
        backends=["tensorrt", "onnxruntime", "opencv"],
    )
    seen: list[dict[str, object]] = []
    pipe = Pipeline(cfg)
    stats = pipe.run(on_frame=seen.append)
    chain = [e for e in pipe.events if e.kind != "budget_exceeded"]
    steps = [(e.kind, e.backend) for e in chain]
    assert steps == [
        ("fallback", "tensorrt"),
        ("fallback", "onnxruntime"),
        ("fallback", "opencv"),
        ("fallback", "tensorrt"),
        ("loaded", "onnxruntime"),
    ]
    reasons = [e.reason for e in chain]
    assert "not installed" in reasons[0] and "sha256" in reasons[1] and "sha256" in reasons[2]
    assert reasons[4].startswith("fallback model")
    assert stats.frames == 8 and {r["model"] for r in seen} == {"tiny-fallback"}


def test_shape_mismatch_moves_to_the_fallback_model(tmp_path: Path) -> None:
    primary = make_package(tmp_path / "primary")
    fallback = make_package(tmp_path / "fallback", seed=3)
    rewrite_manifest(primary, input__shape=[1, 3, 24, 24])
    pipe = Pipeline(
        PipelineConfig(
            model=str(primary),
            fallback_model=str(fallback),
            source=f"npz:{fallback}/reference.npz",
            backends=["onnxruntime"],
        )
    )
    pipe.run()
    assert [e.kind for e in pipe.events if e.kind != "budget_exceeded"] == ["fallback", "loaded"]
    assert "input.shape: says [1, 3, 24, 24]" in pipe.events[0].reason


def test_degraded_pass_through_then_recovery(tmp_path: Path) -> None:
    primary = make_package(tmp_path / "primary")
    good = (primary / "model.onnx").read_bytes()
    _damage(primary)
    source = make_package(tmp_path / "frames", count=8)
    cfg = PipelineConfig(
        model=str(primary),
        source=f"npz:{source}/reference.npz",
        backends=["onnxruntime"],
        retry_s=0.0,
    )
    seen: list[dict[str, object]] = []

    def on_frame(record: dict[str, object]) -> None:
        seen.append(record)
        if len(seen) == 3:  # the technician restores the model; the periodic retry finds it
            (primary / "model.onnx").write_bytes(good)

    pipe = Pipeline(cfg)
    stats = pipe.run(on_frame=on_frame)
    kinds = [e.kind for e in pipe.events if e.kind != "budget_exceeded"]
    assert kinds[:2] == ["fallback", "degraded"] and "loaded" in kinds and kinds[-1] == "recovered"
    degraded = next(e for e in pipe.events if e.kind == "degraded")
    assert degraded.alert
    assert all(r["degraded"] for r in seen[:3]) and not seen[-1]["degraded"]
    assert stats.frames == 8 and 3 <= stats.degraded_frames < 8


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"model": "m"}', "missing required field `source`"),
        ('{"model": "m", "source": "s", "camera": 1}', "unknown field `camera`"),
        (
            '{"model": "m", "source": "s", "threads": "two"}',
            "Expected `int`, got `str` - at `$.threads`",
        ),
        ("{", "truncated"),
    ],
)
def test_bad_pipeline_config_names_file_and_field(tmp_path: Path, text: str, needle: str) -> None:
    from appliance.inference.errors import ConfigError
    from appliance.inference.pipeline import load_config

    path = tmp_path / "pipeline.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: ") and needle in str(exc.value)


def test_toml_config(tmp_path: Path) -> None:
    from appliance.inference.pipeline import load_config

    path = tmp_path / "pipeline.toml"
    path.write_text(
        'model = "/m"\nsource = "v4l2:///dev/video0"\nbackends = ["openvino"]\ndevice = "GPU"\n'
    )
    cfg = load_config(path)
    assert cfg.backends == ["openvino"] and cfg.device == "GPU" and cfg.threads == 1


def test_missing_model_file_falls_back_with_the_reason(tmp_path: Path) -> None:
    primary = make_package(tmp_path / "primary")
    fallback = make_package(tmp_path / "fallback", seed=3)
    (primary / "model.onnx").unlink()
    pipe = Pipeline(
        PipelineConfig(
            model=str(primary),
            fallback_model=str(fallback),
            source=f"npz:{fallback}/reference.npz",
            backends=["opencv"],
        )
    )
    stats = pipe.run()
    chain = [e for e in pipe.events if e.kind != "budget_exceeded"]
    assert [e.kind for e in chain] == ["fallback", "loaded"]
    assert "model.onnx: cannot read model file (No such file or directory)" in chain[0].reason
    assert stats.frames == 8 and stats.degraded_frames == 0


def test_jsonl_sink_flushes_events_at_once_and_results_in_batches(tmp_path: Path) -> None:
    from appliance.inference.sink import JsonlSink

    path = tmp_path / "data" / "r.jsonl"
    sink = JsonlSink(path, flush_every=3600)
    sink.publish({"type": "result", "frame": 0})
    assert path.read_bytes() == b""  # gathered
    sink.publish({"type": "event", "kind": "degraded"})
    assert _lines(path) == [{"type": "result", "frame": 0}, {"type": "event", "kind": "degraded"}]
    sink.publish({"type": "result", "frame": 1})
    sink.close()
    assert _lines(path)[-1] == {"type": "result", "frame": 1}


def test_jsonl_sink_writes_results_from_its_own_thread_without_close(tmp_path: Path) -> None:
    import time

    from appliance.inference.sink import JsonlSink

    path = tmp_path / "r.jsonl"
    sink = JsonlSink(path, flush_every=0.02, fsync_every=0.0)
    for i in range(5):
        sink.publish({"type": "result", "frame": i})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(path.read_bytes().splitlines()) < 5:
        time.sleep(0.01)
    assert [x["frame"] for x in _lines(path)] == [0, 1, 2, 3, 4]
    assert sink._thread.is_alive()
    sink.close()
    assert not sink._thread.is_alive()
    sink.close()  # idempotent


def test_stages_over_budget_are_in_the_records_and_raise_rate_limited_events(
    tiny_package: Path, tmp_path: Path
) -> None:
    sink = tmp_path / "r.jsonl"
    cfg = PipelineConfig(
        model=str(tiny_package),
        source=f"npz:{tiny_package}/reference.npz",
        sink=str(sink),
        budget_factor=1e-9,
    )
    pipe = Pipeline(cfg)
    stats = pipe.run()
    lines = _lines(sink)
    results = [x for x in lines if x["type"] == "result"]
    assert len(results) == 8
    assert all({"pre", "infer", "post"} <= set(r["over_budget"]) for r in results)
    budget_events = [x for x in lines if x["type"] == "event" and x["kind"] == "budget_exceeded"]
    stages = sorted(e["reason"].split()[0] for e in budget_events)
    assert stages == sorted(["capture", "pre", "infer", "post", "publish", "total"])  # once each
    assert stats.over_budget["infer"] == 8 and stats.over_budget["total"] == 8
