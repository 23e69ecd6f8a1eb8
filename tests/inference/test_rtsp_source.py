"""RTSP/H.264 from a real RTSP server (GStreamer's, x264-encoded), without OpenCV or ffmpeg.

Each test starts its own server on a free port (``rtsp_server.py``, run by the system python3
that has the GObject bindings). The stream is SMPTE colour bars, so the decoded pixels are known.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.inference import sources
from appliance.inference.chain import Event
from appliance.inference.errors import SourceError
from appliance.inference.pipeline import Pipeline, PipelineConfig
from appliance.inference.sources import LatestFrameGrabber, openh264
from appliance.inference.sources.rtsp import NotH264Stream, RtspSource
from tests.inference.rtsp_server import SYSTEM_PYTHON, RtspServer

pytestmark = [
    pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="no system python3"),
    pytest.mark.skipif(not openh264.available(), reason="libopenh264-7 is not installed"),
]

# SMPTE bars (GStreamer's 100 % bars) in BGR, left to right over the top two thirds
BARS = [
    (255, 255, 255),
    (0, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (255, 0, 255),
    (0, 0, 255),
    (255, 0, 0),
]


def assert_bars(image: np.ndarray) -> None:
    height, width = image.shape[:2]
    for i, colour in enumerate(BARS):
        x = int((i + 0.5) * width / 7)
        patch = image[height // 4 - 4 : height // 4 + 4, x - 4 : x + 4].reshape(-1, 3)
        diff = np.abs(patch.astype(int) - np.array(colour)).max()
        assert diff <= 24, (i, colour, patch.mean(axis=0))


def test_h264_frames_decode_at_their_size_with_the_right_colours() -> None:
    with RtspServer("--size", "640x480", "--session-timeout", "2") as server:
        source = RtspSource(server.url())
        try:
            frames = [source.read() for _ in range(8)]
            assert all(f is not None for f in frames)
            first = frames[0]
            assert first is not None and first.image.shape == (480, 640, 3)
            assert first.color == "BGR" and first.image.dtype == np.uint8
            assert [f.index for f in frames if f is not None] == list(range(8))
            assert_bars(first.image)
            # announced session timeout 2 s: keep-alives every 1 s, answered 200
            deadline = time.monotonic() + 2.6
            while time.monotonic() < deadline:
                assert source.read() is not None
            assert source.keepalives >= 2, source.keepalives
            assert (source.lost, source.dropped) == (0, 0)
        finally:
            source.close()


def test_basic_auth_required_wrong_and_right() -> None:
    with RtspServer("--user", "admin", "--password", "s3cret!") as server:
        with pytest.raises(SourceError, match="requires a user and password") as missing:
            RtspSource(server.url())
        assert server.url() in str(missing.value)
        with pytest.raises(SourceError, match="authentication failed") as wrong:
            RtspSource(server.url(userinfo="admin:nope"))
        assert "nope" not in str(wrong.value) and "admin" not in str(wrong.value)
        assert server.url() in str(wrong.value)
        source = RtspSource(server.url(userinfo="admin:s3cret%21"))  # URL-encoded '!'
        try:
            frame = source.read()
            assert frame is not None and frame.image.shape == (240, 320, 3)
            assert "s3cret" not in source.uri and source.auth_scheme == "basic"
        finally:
            source.close()


def test_digest_auth() -> None:
    with RtspServer("--user", "cam", "--password", "pw", "--auth", "digest") as server:
        with pytest.raises(SourceError, match="authentication failed"):
            RtspSource(server.url(userinfo="cam:wrong"))
        source = RtspSource(server.url(userinfo="cam:pw"))
        try:
            assert source.auth_scheme == "digest"
            frame = source.read()
            assert frame is not None
            assert_bars(frame.image)
        finally:
            source.close()


def test_server_dying_mid_stream_is_a_source_error_naming_the_url() -> None:
    server = RtspServer("--user", "u", "--password", "p")
    try:
        grabber = LatestFrameGrabber(RtspSource(server.url(userinfo="u:p")))
        try:
            assert grabber.get() is not None
            server.stop()
            with pytest.raises(SourceError) as lost:
                for _ in range(100):  # frames already received may still come first
                    grabber.get()
            message = str(lost.value)
            assert message.startswith(server.url() + ":"), message
            assert "u:p@" not in message
        finally:
            grabber.close()
    finally:
        server.stop()


def test_a_stream_that_is_not_h264_is_refused_clearly() -> None:
    with RtspServer("--codec", "jpeg") as server:
        with pytest.raises(NotH264Stream, match=r"the camera sends JPEG, not H\.264") as err:
            RtspSource(server.url())
        assert server.url() in str(err.value)


def test_a_path_that_does_not_exist_is_a_404() -> None:
    with RtspServer() as server:
        url = server.url("/nothing-here")
        with pytest.raises(SourceError, match="DESCRIBE answered 404 Not Found") as err:
            RtspSource(url)
        assert str(err.value).startswith(url + ":")


def test_open_source_without_opencv_reads_rtsp_in_python(tmp_path: Path) -> None:
    from tests.inference.test_sources_no_opencv import run_without

    with RtspServer() as server:
        out = run_without(
            tmp_path,
            ("cv2",),
            f"""
            from appliance.inference.sources import capabilities, open_source
            src = open_source({server.url()!r})
            frame = src.read()
            print(type(src).__name__, frame.image.shape, capabilities()["rtsp"])
            src.close()
            """,
        )
    assert out.split() == ["RtspSource", "(240,", "320,", "3)", "openh264"], out


def test_a_stalled_camera_is_a_source_error_not_a_hang() -> None:
    server = RtspServer()
    try:
        source = RtspSource(server.url(), read_timeout_ms=1000)  # the default is 5 s
        assert source.read() is not None
        os.kill(server.proc.pid, signal.SIGSTOP)  # the camera hangs with the connection open
        t0 = time.monotonic()
        with pytest.raises(
            SourceError, match=r"no frame for 1\.0 s \(camera or stream stalled"
        ) as err:
            for _ in range(1000):  # what was already in the socket buffer comes first
                source.read()
        assert time.monotonic() - t0 < 30  # hang guard only
        assert str(err.value).startswith(server.url() + ":")
        source.close()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def _wait(cond: Any, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_the_pipeline_reconnects_to_an_rtsp_camera_that_comes_back(
    tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without OpenCV (as the default runtime): lost, reopened with backoff, frames again."""
    importable = sources._importable
    monkeypatch.setattr(sources, "_importable", lambda name: name != "cv2" and importable(name))
    server = RtspServer("--user", "op", "--password", "pw-x9")
    port = server.port
    url = server.url(userinfo="op:pw-x9")
    cfg = PipelineConfig(model=str(tiny_package), source=url, sink=str(tmp_path / "r"))
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

    thread = threading.Thread(target=work)
    thread.start()
    try:
        assert _wait(lambda: len(frames) >= 5), "no frames from the RTSP camera"
        server.stop()  # the camera disappears mid-stream
        assert _wait(lambda: any(e.kind == "source_lost" for e in events))
        n = len(frames)
        server = RtspServer("--port", str(port), "--user", "op", "--password", "pw-x9")  # back
        assert _wait(lambda: any(e.kind == "source_reopened" for e in events))
        assert _wait(lambda: len(frames) >= n + 5)
    finally:
        stop.set()
        thread.join(30)
        server.stop()
    assert not thread.is_alive() and "error" not in result
    lost = next(e for e in events if e.kind == "source_lost")
    assert lost.alert and f"rtsp://127.0.0.1:{port}/cam" in lost.reason
    # the password never reaches an event (they go to the sink and to telemetry)
    assert all("pw-x9" not in e.reason for e in events), [e.reason for e in events]
    assert "pw-x9" not in (tmp_path / "r").read_text()


def test_without_libyuv_numpy_converts_the_decoded_pictures() -> None:
    """libyuv hidden in a private mount namespace: the I420 pictures convert in numpy."""
    from tests.image.test_freeze_camera import WITHOUT_SYSTEM_LIBYUV, system_libyuv

    lib = system_libyuv()
    if lib is None or shutil.which("unshare") is None:
        pytest.skip("no system libyuv to hide, or no unshare")
    code = (
        "import sys\n"
        "from appliance.inference.sources import libyuv\n"
        "from appliance.inference.sources.rtsp import RtspSource\n"
        "from tests.inference.test_rtsp_source import assert_bars\n"
        "src = RtspSource(sys.argv[1])\n"
        "assert_bars(src.read().image)\n"
        "src.close()\n"
        "print(libyuv.available())\n"
    )
    cmd = ["unshare", "-m", "sh", "-c", WITHOUT_SYSTEM_LIBYUV, str(lib), sys.executable]
    with RtspServer() as server:
        done = subprocess.run(
            [*cmd, "-c", code, server.url()],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def test_high_profile_with_b_frames_comes_out_in_display_order() -> None:
    """Cameras' Main/High streams (CABAC, B-frames): each frame is the pattern moved 4 px on."""
    args = ("--profile", "high", "--bframes", "2", "--motion", "4", "--bitrate", "4000")
    with RtspServer(*args) as server:
        source = RtspSource(server.url())
        try:
            images = [f.image.astype(int) for f in (source.read() for _ in range(8)) if f]
        finally:
            source.close()

    def shift(a: np.ndarray, b: np.ndarray) -> int:
        """The horizontal move from a to b (the frame edges left out)."""
        return min(
            range(-12, 13),
            key=lambda k: float(np.abs(np.roll(a, k, axis=1)[:, 16:-16] - b[:, 16:-16]).mean()),
        )

    assert len(images) == 8
    assert [shift(images[i], images[i + 1]) for i in range(7)] == [-4] * 7


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_reads_the_same_pictures_from_the_same_server() -> None:
    """The ffmpeg reader on a real RTSP server too, and our pictures against FFmpeg's decode."""
    from appliance.inference.sources.ffmpeg_pipe import FfmpegPipeSource

    with RtspServer("--size", "320x240") as server:
        url = server.url()
        ours = RtspSource(url)
        try:
            mine = ours.read()
        finally:
            ours.close()
        ffmpeg = FfmpegPipeSource(url, url, live=True)
        try:
            theirs = ffmpeg.read()
        finally:
            ffmpeg.close()
        assert mine is not None and theirs is not None
        rgb = theirs.image if theirs.color == "BGR" else theirs.image[..., ::-1]
        assert rgb.shape == mine.image.shape == (240, 320, 3)
        assert_bars(rgb)
        # the bars are static (the bottom of GStreamer's SMPTE pattern has moving noise)
        diff = np.abs(rgb[:120].astype(int) - mine.image[:120].astype(int))
        assert diff.mean() < 2, diff.mean()  # the same picture from two decoders (0.6 here)
