"""The intel-openvino runtime (no OpenCV) reads cameras: linuxpy, simplejpeg, libyuv frozen in.

A frozen program gets no V4L2 device on the build host, so the V4L2 check goes as far as the
kernel lets it: ``/dev/null`` answers the first V4L2 ioctl (VIDIOC_QUERYCAP) with ENOTTY, which
only linuxpy's code path can report ("needs linuxpy" would mean it was not frozen in), and the
pipeline keeps waiting for the camera instead of crashing. JPEG frames go through simplejpeg,
YUYV through the bundled libyuv (PyInstaller finds it by its ctypes load), and a video file and
an MJPEG stream over HTTP (both made by ffmpeg here) reach the frozen pipeline without OpenCV.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from image.freeze.runtime import FrozenRuntime, freeze_runtime


@pytest.fixture(scope="module")
def openvino_rt(tmp_path_factory: pytest.TempPathFactory) -> FrozenRuntime:
    """The intel-openvino runtime from the kiln cache (test_freeze.py's and the QEMU profile's
    entry: frozen once per run of the suite)."""
    from tests.image.test_freeze import shared_freeze_cache

    out = tmp_path_factory.mktemp("openvino-camera")
    return freeze_runtime("intel-openvino", out, cache_dir=shared_freeze_cache())


def _events(sink: Path) -> list[dict[str, object]]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_frozen_runtime_without_opencv_reaches_the_v4l2_ioctls(
    openvino_rt: FrozenRuntime, tmp_path: Path
) -> None:
    assert not (openvino_rt.path / "_internal" / "cv2").exists()  # really without OpenCV
    sink = tmp_path / "events.jsonl"
    args = ["run", "--model", str(tmp_path / "no-model"), "--source", "v4l2:///dev/null"]
    proc = subprocess.Popen(
        [str(openvino_rt.executable), *args, "--sink", str(sink)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e.get("kind") == "source_lost" for e in _events(sink)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()  # still waiting for its camera
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lost = [e for e in _events(sink) if e.get("kind") == "source_lost"]
    assert lost, err
    reason = str(lost[0]["reason"])
    assert "cannot open /dev/null as a V4L2 camera" in reason and "ioctl" in reason, reason
    assert "ModuleNotFoundError" not in err and "Traceback" not in err


@pytest.mark.slow
def test_frozen_runtime_without_opencv_reads_jpeg_frames(
    openvino_rt: FrozenRuntime, tmp_path: Path
) -> None:
    import simplejpeg

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 256, (48, 64, 3), np.uint8)
        (folder / f"{i}.jpg").write_bytes(simplejpeg.encode_jpeg(image, colorspace="BGR"))
    sink = tmp_path / "results.jsonl"
    args = ["run", "--model", str(tmp_path / "no-model"), "--source", str(folder)]
    done = subprocess.run(
        [str(openvino_rt.executable), *args, "--sink", str(sink)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    frames = [e for e in _events(sink) if e.get("type") != "event"]
    assert len(frames) == 3 and all(f.get("degraded") for f in frames), frames


# Runs a command with the system's libyuv replaced by an empty file (a private mount namespace),
# as on a device whose root has no libyuv0: only a bundled copy can load then.
WITHOUT_SYSTEM_LIBYUV = 'mount --bind /dev/null "$0" && exec "$@"'


def system_libyuv() -> Path | None:
    """The file the system's ``libyuv.so.0`` resolves to, if the system has one."""
    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib"):
        found = sorted(Path(folder).glob("libyuv.so.0*"))
        if found:
            return found[0].resolve()
    return None


@pytest.mark.slow
def test_frozen_runtime_bundles_libyuv_and_finds_ffmpeg(openvino_rt: FrozenRuntime) -> None:
    assert list((openvino_rt.path / "_internal").rglob("libyuv.so*")), "libyuv not bundled"
    cmd = [str(openvino_rt.executable), "info", "--json"]
    lib = system_libyuv()
    if lib is not None and shutil.which("unshare"):
        cmd = ["unshare", "-m", "sh", "-c", WITHOUT_SYSTEM_LIBYUV, str(lib), *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    camera = json.loads(done.stdout)["camera"]
    assert camera["yuyv"] == "libyuv" and camera["v4l2"] == "linuxpy", camera
    assert camera["streams"] == ("ffmpeg" if shutil.which("ffmpeg") else "mjpeg-http"), camera


def _run_until(cmd: list[str], sink: Path, frames: int) -> str:
    """Run the frozen pipeline until ``frames`` records are in the sink, then stop it (SIGINT)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if len([e for e in _events(sink) if e.get("type") != "event"]) >= frames:
                break
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_frozen_runtime_without_opencv_reads_a_video_file_and_an_mjpeg_stream(
    openvino_rt: FrozenRuntime, tmp_path: Path
) -> None:
    from tests.inference.test_stream_sources import free_port, make_video, serve

    video = make_video(tmp_path / "clip.avi")
    sink = tmp_path / "file.jsonl"
    exe = [str(openvino_rt.executable), "run", "--model", str(tmp_path / "no-model")]
    done = subprocess.run(
        [*exe, "--source", str(video), "--sink", str(sink)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len([e for e in _events(sink) if e.get("type") != "event"]) == 12, done.stderr

    # H.264 in an MP4 needs no ffmpeg program: the frozen MP4 demuxer and openh264 read it
    mp4, mp4_sink = tmp_path / "clip.mp4", tmp_path / "mp4.jsonl"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
         "-frames:v", "12", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(mp4)],
        check=True,
        timeout=60,
    )  # fmt: skip
    done = subprocess.run(
        [*exe, "--source", str(mp4), "--sink", str(mp4_sink)],
        env={k: v for k, v in os.environ.items() if k != "EDGEKILN_FFMPEG"} | {"PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len([e for e in _events(mp4_sink) if e.get("type") != "event"]) == 12, done.stderr

    port = free_port()
    server = serve("mpjpeg", port)
    stream = tmp_path / "stream.jsonl"
    try:
        err = _run_until(
            [*exe, "--source", f"http://127.0.0.1:{port}/cam", "--sink", str(stream)], stream, 3
        )
    finally:
        server.kill()
        server.wait(timeout=10)
    records = [e for e in _events(stream) if e.get("type") != "event"]
    assert len(records) >= 3 and all(r.get("degraded") for r in records), (records, err)
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3 (gi)")
def test_frozen_runtime_bundles_openh264_and_reads_an_rtsp_camera(
    openvino_rt: FrozenRuntime, tmp_path: Path
) -> None:
    """RTSP/H.264 in the frozen runtime with the system's libopenh264 hidden (bundled copy)."""
    from tests.inference.rtsp_server import RtspServer

    bundled = list((openvino_rt.path / "_internal").rglob("libopenh264.so*"))
    assert bundled, "libopenh264 not bundled"
    cmd = [str(openvino_rt.executable)]
    system = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("libopenh264.so.2*"))
    if system and shutil.which("unshare"):
        cmd = ["unshare", "-m", "sh", "-c", WITHOUT_SYSTEM_LIBYUV, str(system[0]), *cmd]
    info = subprocess.run([*cmd, "info", "--json"], capture_output=True, text=True, check=False)
    camera = json.loads(info.stdout)["camera"]
    assert camera["rtsp"] == camera["h264_files"] == "openh264", info.stderr
    sink = tmp_path / "rtsp.jsonl"
    with RtspServer() as server:
        args = ["run", "--model", str(tmp_path / "no-model"), "--source", server.url()]
        err = _run_until([*cmd, *args, "--sink", str(sink)], sink, 3)
    records = [e for e in _events(sink) if e.get("type") != "event"]
    assert len(records) >= 3 and all(r.get("degraded") for r in records), (records, err)
    assert "Traceback" not in err
