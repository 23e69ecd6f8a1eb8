"""Sources in a runtime without OpenCV (intel-openvino, coral-usb-arm64, jetson-orin).

Each test runs in a fresh interpreter whose ``sitecustomize`` blocks ``import cv2`` (and, where
asked, linuxpy/simplejpeg) exactly as a frozen runtime that does not carry them: every opening
failure must be a SourceError naming the source and the reason, and neither the pipeline nor
the degraded worker may die of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

BLOCKER = """
import sys

BLOCKED = {blocked!r}


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _Block())
"""


def run_without(tmp_path: Path, blocked: tuple[str, ...], code: str, timeout: float = 90) -> str:
    """Run ``code`` in a child Python where the ``blocked`` top-level modules cannot import."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=blocked))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def source_errors_bare(tmp_path: Path, *uris: str) -> list[str]:
    """``open_source`` of each URI in a runtime with neither OpenCV nor an ffmpeg program: the
    ``SourceError`` lines it prints (one per URI that failed)."""
    out = run_without(
        tmp_path,
        ("cv2",),
        f"""
        import os
        os.environ["PATH"] = ""
        os.environ.pop("EDGEKILN_FFMPEG", None)
        from appliance.inference.errors import SourceError
        from appliance.inference.sources import open_source
        for uri in {list(uris)!r}:
            try:
                open_source(uri)
            except SourceError as exc:
                print("SourceError:", exc)
        """,
    )
    return out.splitlines()


def test_the_blocker_really_blocks_opencv(tmp_path: Path) -> None:
    out = run_without(
        tmp_path,
        ("cv2",),
        """
        try:
            import cv2
        except ModuleNotFoundError as exc:
            print("blocked", exc.name)
        """,
    )
    assert out.strip() == "blocked cv2"


@pytest.mark.parametrize(
    ("blocked", "uri", "expected"),
    [
        # linuxpy present: the missing device is the reason, with its path.
        (("cv2",), "v4l2:///dev/video-edgekiln-missing", "/dev/video-edgekiln-missing"),
        (("cv2",), "/dev/video-edgekiln-missing", "No such file"),
        # /dev/null exists but answers no V4L2 ioctl (ENOTTY): the ioctl path up to the device.
        (("cv2",), "v4l2:///dev/null", "cannot open /dev/null as a V4L2 camera"),
        # Neither linuxpy nor OpenCV: the library is the reason.
        (("cv2", "linuxpy"), "v4l2:///dev/video0", "needs linuxpy"),
        # Streams go to the ffmpeg program on PATH: its reason, with the URL.
        (("cv2",), "rtsp://127.0.0.1:1/stream", "Connection refused"),
    ],
)
def test_a_source_that_cannot_open_is_a_source_error(
    tmp_path: Path, blocked: tuple[str, ...], uri: str, expected: str
) -> None:
    out = run_without(
        tmp_path,
        blocked,
        f"""
        from appliance.inference.errors import SourceError
        from appliance.inference.sources import open_source
        try:
            open_source({uri!r})
        except SourceError as exc:
            print("SourceError:", exc)
        """,
    )
    assert out.startswith("SourceError: "), out
    assert expected in out
    assert uri.split("?", maxsplit=1)[0] in out  # the message names the source


def test_streams_and_files_without_opencv_or_ffmpeg_say_what_is_missing(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 64)
    lines = source_errors_bare(
        tmp_path, "rtsp://127.0.0.1:1/stream", "udp://127.0.0.1:1", str(video)
    )
    assert len(lines) == 3 and all("needs OpenCV or an ffmpeg program" in x for x in lines[1:])
    assert "udp://127.0.0.1:1" in lines[1] and str(video) in lines[2]
    # RTSP needs neither: the Python reader tried, and says why it could not open
    assert lines[0].startswith("SourceError: rtsp://127.0.0.1:1/stream: ")
    assert "Connection refused" in lines[0] or "openh264" in lines[0], lines[0]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_open_source_without_opencv_picks_ffmpeg_for_files_and_python_for_mjpeg(
    tmp_path: Path,
) -> None:
    from tests.inference.test_stream_sources import free_port, make_video, serve

    video = make_video(tmp_path / "clip.avi")
    port = free_port()
    server = serve("mpjpeg", port)
    try:
        out = run_without(
            tmp_path,
            ("cv2",),
            f"""
            import time
            from appliance.inference.errors import SourceError
            from appliance.inference.sources import frames, open_source
            source = open_source({str(video)!r})
            print(type(source).__name__, len(list(frames(source))))
            deadline = time.monotonic() + 20
            while True:
                try:
                    source = open_source("http://127.0.0.1:{port}/cam")
                    break
                except SourceError as exc:
                    if "refused" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            frame = source.read()
            print(type(source).__name__, frame.image.shape, frame.color)
            source.close()
            """,
        )
    finally:
        server.kill()
        server.wait(timeout=10)
    assert out.splitlines() == ["FfmpegPipeSource 12", "MjpegHttpSource (240, 320, 3) BGR"]


def test_jpeg_folder_reads_without_opencv_and_png_is_refused(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    jpegs, pngs = tmp_path / "jpegs", tmp_path / "pngs"
    jpegs.mkdir()
    pngs.mkdir()
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), np.uint8)
    cv2.imwrite(str(jpegs / "a.jpg"), image)
    cv2.imwrite(str(jpegs / "b.jpeg"), image)
    cv2.imwrite(str(pngs / "a.png"), image)
    out = run_without(
        tmp_path,
        ("cv2",),
        f"""
        from appliance.inference.errors import SourceError
        from appliance.inference.sources import frames, open_source
        print([f.image.shape for f in frames(open_source({str(jpegs)!r}))])
        try:
            open_source({str(pngs)!r})
        except SourceError as exc:
            print("SourceError:", exc)
        """,
    )
    shapes, refused = out.splitlines()
    assert shapes == "[(24, 32, 3), (24, 32, 3)]"
    assert refused.startswith("SourceError: ") and "a.png" in refused and "OpenCV" in refused


@pytest.mark.integration
def test_pipeline_without_opencv_waits_for_the_camera(tmp_path: Path) -> None:
    """The intel-openvino default: v4l2:///dev/video0 in a runtime without OpenCV, no camera."""
    out = run_without(
        tmp_path,
        ("cv2",),
        f"""
        import threading
        from appliance.inference.pipeline import Pipeline, PipelineConfig

        cfg = PipelineConfig(
            model={str(tmp_path / "no-model")!r},
            source="v4l2:///dev/video-edgekiln-missing",
            reconnect_max_s=0.5,
        )
        stop = threading.Event()
        events = []

        def on_event(event):
            events.append(event)
            if sum(e.kind == "source_lost" for e in events) >= 1:
                threading.Timer(1.5, stop.set).start()

        stats = Pipeline(cfg).run(stop, on_event=on_event)
        for e in events:
            print(e.kind, "|", e.reason)
        """,
    )
    lost = [line for line in out.splitlines() if line.startswith("source_lost")]
    assert lost, out
    assert "/dev/video-edgekiln-missing" in lost[0] and "No such file" in lost[0]


@pytest.mark.integration
def test_degraded_worker_without_opencv_survives_a_missing_camera(tmp_path: Path) -> None:
    """The last supervisor mode must not crash-loop when the camera cannot open."""
    sink = tmp_path / "results.jsonl"
    config = tmp_path / "pipeline.json"
    config.write_text(
        json.dumps(
            {
                "model": str(tmp_path / "no-model"),
                "source": "v4l2:///dev/video-edgekiln-missing",
                "sink": str(sink),
                "backends": ["onnxruntime"],
                "reconnect_max_s": 1.0,
            }
        )
    )
    out = run_without(
        tmp_path,
        ("cv2",),
        f"""
        import json, threading, time
        from pathlib import Path
        from appliance.supervisor.pipeline_worker import pipeline_target
        from appliance.supervisor.supervisor import Policy, Supervisor

        policy = Policy(heartbeat_timeout_s=20, backoff_initial_s=0.2, tick_s=0.05)
        sup = Supervisor(pipeline_target(Path({str(config)!r})), policy, modes=("degraded",))
        stop = threading.Event()
        thread = threading.Thread(target=sup.run, args=(stop,))
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(e["kind"] == "source_lost" for e in sup.events) >= 2:
                break
            time.sleep(0.05)
        stop.set()
        thread.join()
        print(json.dumps(sup.events, default=str))
        """,
    )
    events = json.loads(out.strip().splitlines()[-1])
    kinds = [e["kind"] for e in events]
    assert kinds.count("source_lost") >= 2, kinds
    assert kinds.count("worker_started") == 1, kinds  # one worker, alive the whole time
    lost = next(e for e in events if e["kind"] == "source_lost")
    assert lost["alert"] and "/dev/video-edgekiln-missing" in lost["reason"]
    assert not [e for e in events if e["kind"] == "worker_exited" and e.get("exitcode")], kinds


@pytest.mark.integration
def test_camera_sized_frames_reach_the_model_without_opencv(tmp_path: Path) -> None:
    """640x480 camera frames, resized to the model's input in numpy: real results, no fallback."""
    import simplejpeg

    from tests.inference.fixtures import make_package

    package = make_package(tmp_path / "pkg")
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 256, (480, 640, 3), np.uint8)
        (folder / f"{i}.jpg").write_bytes(simplejpeg.encode_jpeg(image, colorspace="BGR"))
    sink = tmp_path / "results.jsonl"
    run_without(
        tmp_path,
        ("cv2",),
        f"""
        from appliance.inference.pipeline import Pipeline, PipelineConfig
        cfg = PipelineConfig(model={str(package)!r}, source={str(folder)!r}, sink={str(sink)!r})
        Pipeline(cfg).run()
        """,
    )
    records = [json.loads(line) for line in sink.read_text().splitlines()]
    results = [r for r in records if r.get("type") == "result"]
    assert len(results) == 3 and not any(r.get("degraded") for r in results), records
    assert not [r for r in records if r.get("kind") in ("fallback", "degraded")], records
