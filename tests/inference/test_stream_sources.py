"""Network streams and video files without OpenCV: real streams served by FFmpeg on this host.

* a video file made by ffmpeg, decoded through the ``ffmpeg`` program (``FfmpegPipeSource``),
* MJPEG over HTTP served by ``ffmpeg -f mpjpeg -listen 1``, read in Python (``MjpegHttpSource``),
* MPEG-TS over HTTP served by ``ffmpeg -f mpegts -listen 1``, decoded by ffmpeg,
* dead streams (a port that accepts and never answers, a closed port): a SourceError naming the
  source within the open timeout, never a hang.

No RTSP server is packaged for Debian 12 or PyPI in a form we can start here (mediamtx is
not in Debian; GStreamer's RTSP server is a library without a server program), so RTSP itself
is covered by the argument list and the dead-server case only.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.errors import SourceError
from appliance.inference.sources import LatestFrameGrabber, frames
from appliance.inference.sources.ffmpeg_pipe import FfmpegPipeSource, ffmpeg_command
from appliance.inference.sources.frame import OPEN_TIMEOUT_MS
from appliance.inference.sources.mjpeg_http import MjpegHttpSource, NotMjpegStream
from appliance.inference.sources.opencv import CvCaptureSource
from appliance.inference.sources.rtsp import RtspSource

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")
W, H = 320, 240
HANG_GUARD_S = OPEN_TIMEOUT_MS / 1000 + 25  # far above the timeout: only a hang fails this


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_video(path: Path, count: int = 12) -> Path:
    assert FFMPEG is not None
    src = ["-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=10", "-frames:v", str(count)]
    subprocess.run(
        [FFMPEG, "-loglevel", "error", *src, "-c:v", "mpeg4", "-q:v", "2", str(path)],
        check=True,
        timeout=60,
    )
    return path


def serve(fmt: str, port: int) -> subprocess.Popen[bytes]:
    """ffmpeg as a one-client HTTP server of a live test pattern (``-listen 1``)."""
    assert FFMPEG is not None
    if fmt == "mpjpeg":  # the HTTP header a camera sends (ffmpeg's default: octet-stream)
        ctype = "multipart/x-mixed-replace;boundary=ffmpeg"
        codec = ["-c:v", "mjpeg", "-q:v", "3", "-boundary_tag", "ffmpeg", "-content_type", ctype]
    else:
        codec = ["-c:v", "mpeg2video"]
    src = ["-re", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=15"]
    out = ["-f", fmt, "-listen", "1", f"http://127.0.0.1:{port}/cam"]
    return subprocess.Popen(
        [FFMPEG, "-loglevel", "error", *src, *codec, *out],
        stdin=subprocess.DEVNULL,
    )


def open_when_up(opener: type, url: str, *args: object) -> object:
    """Open ``url`` once the server listens (refused connections are retried for 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return opener(url, *args)
        except SourceError as exc:
            if "refused" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts connections (kernel backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_video_file_without_opencv(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    video = make_video(tmp_path / "clip.avi")
    source = FfmpegPipeSource(str(video), str(video), live=False)
    got = list(frames(source))
    source.close()
    assert len(got) == 12 and [f.index for f in got] == list(range(12))
    assert all(f.image.shape == (H, W, 3) and f.color == "RGB" for f in got)
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    cap.release()
    assert ok
    diff = np.abs(got[0].image.astype(np.int16) - first[..., ::-1])  # OpenCV gives BGR
    assert diff.mean() < 2.0, diff.mean()  # the same FFmpeg decoder; swscale versions differ


def test_a_video_file_that_is_not_one_is_a_source_error(tmp_path: Path) -> None:
    bogus = tmp_path / "clip.mp4"
    bogus.write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match=r"clip\.mp4: cannot open .*ffmpeg said: .*clip\.mp4"):
        FfmpegPipeSource(str(bogus), str(bogus), live=False)


def test_mjpeg_over_http_from_ffmpeg_through_the_grabber() -> None:
    port = free_port()
    server = serve("mpjpeg", port)
    url = f"http://127.0.0.1:{port}/cam"
    try:
        source = open_when_up(MjpegHttpSource, url)
        assert isinstance(source, MjpegHttpSource)
        grabber = LatestFrameGrabber(source)
        got = [grabber.get(timeout=HANG_GUARD_S) for _ in range(4)]
        assert all(f is not None and f.image.shape == (H, W, 3) for f in got)
        assert all(f is not None and f.color == "BGR" and f.image.std() > 20 for f in got)
        server.kill()  # the camera dies mid-stream: the next get() says so
        server.wait(timeout=10)
        with pytest.raises(SourceError, match=url):
            deadline = time.monotonic() + HANG_GUARD_S
            while time.monotonic() < deadline:
                grabber.get(timeout=HANG_GUARD_S)
        grabber.close()
    finally:
        server.kill()
        server.wait(timeout=10)


def test_mpegts_over_http_is_not_mjpeg_and_ffmpeg_reads_it() -> None:
    port = free_port()
    server = serve("mpegts", port)
    url = f"http://127.0.0.1:{port}/cam"
    try:
        source = open_when_up(FfmpegPipeSource, url, url, True)
        assert isinstance(source, FfmpegPipeSource)
        got = [source.read() for _ in range(3)]
        assert all(f is not None and f.image.shape == (H, W, 3) for f in got)
        source.close()
    finally:
        server.kill()
        server.wait(timeout=10)


def test_a_server_that_sends_no_mjpeg_is_handed_on(tmp_path: Path) -> None:
    """The MJPEG reader refuses other content types with NotMjpegStream (then ffmpeg's turn)."""
    port = free_port()
    server = serve("mpegts", port)
    try:
        with pytest.raises(NotMjpegStream, match="not MJPEG"):
            open_when_up(MjpegHttpSource, f"http://127.0.0.1:{port}/cam")
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.mark.parametrize(
    ("opener", "scheme"),
    [
        (MjpegHttpSource, "http"),
        (FfmpegPipeSource, "http"),
        (FfmpegPipeSource, "rtsp"),
        (RtspSource, "rtsp"),
    ],
    ids=["mjpeg-http", "ffmpeg-http", "ffmpeg-rtsp", "python-rtsp"],
)
def test_a_dead_stream_is_a_source_error_not_a_hang(
    silent_port: int, opener: type, scheme: str
) -> None:
    url = f"{scheme}://127.0.0.1:{silent_port}/cam"
    args = (url, True) if opener is FfmpegPipeSource else ()
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        opener(url, *args)
    assert time.monotonic() - t0 < HANG_GUARD_S
    assert url in str(err.value) and ("stalled" in str(err.value) or "ffmpeg" in str(err.value))


@pytest.mark.parametrize("scheme", ["http", "rtsp", "python-rtsp"])
def test_an_unreachable_stream_is_a_source_error(scheme: str) -> None:
    url = f"{scheme.removeprefix('python-')}://127.0.0.1:{free_port()}/cam"
    opener: type = {"http": MjpegHttpSource, "rtsp": FfmpegPipeSource}.get(scheme, RtspSource)
    args = (url, True) if opener is FfmpegPipeSource else ()
    with pytest.raises(SourceError, match=r"(?i)refused") as err:
        opener(url, *args)
    assert url in str(err.value)


def test_rtsp_asks_for_tcp_and_a_socket_timeout() -> None:
    cmd = ffmpeg_command("ffmpeg", "rtsp://cam/stream", live=True, realtime=False)
    assert cmd[cmd.index("-rtsp_transport") + 1] == "tcp"
    assert int(cmd[cmd.index("-timeout") + 1]) == OPEN_TIMEOUT_MS * 1000
    http = ffmpeg_command("ffmpeg", "http://cam/stream", live=True, realtime=False)
    assert "-rw_timeout" in http and "-timeout" not in http
    assert "-rw_timeout" not in ffmpeg_command("ffmpeg", "/v.mp4", live=False, realtime=True)


@pytest.mark.parametrize("reader", ["mjpeg-http", "python-rtsp", "ffmpeg-rtsp", "opencv-rtsp"])
def test_stream_errors_do_not_show_the_password(reader: str) -> None:
    """A camera URL's ``user:password@`` stays out of SourceError messages (logs, events)."""
    scheme = "http" if reader == "mjpeg-http" else "rtsp"
    port = free_port()
    url = f"{scheme}://admin:hunter2@127.0.0.1:{port}/cam"
    with pytest.raises(SourceError) as err:
        if reader == "mjpeg-http":
            MjpegHttpSource(url)
        elif reader == "python-rtsp":
            RtspSource(url)
        elif reader == "ffmpeg-rtsp":
            FfmpegPipeSource(url, url, True)
        else:
            pytest.importorskip("cv2")
            CvCaptureSource(url, url, "ffmpeg", live=True)
    assert "hunter2" not in str(err.value), err.value
    assert str(err.value).startswith(f"{scheme}://127.0.0.1:{port}/cam: "), err.value
