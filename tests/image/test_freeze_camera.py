"""The intel-openvino runtime (no OpenCV) reads cameras: linuxpy and simplejpeg are frozen in.

A frozen program gets no V4L2 device on the build host, so the V4L2 check goes as far as the
kernel lets it: ``/dev/null`` answers the first V4L2 ioctl (VIDIOC_QUERYCAP) with ENOTTY, which
only linuxpy's code path can report ("needs linuxpy" would mean it was not frozen in), and the
pipeline keeps waiting for the camera instead of crashing. JPEG frames go through simplejpeg.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from image.freeze.runtime import FrozenRuntime, freeze_runtime


@pytest.fixture(scope="module")
def openvino_rt(tmp_path_factory: pytest.TempPathFactory) -> FrozenRuntime:
    out = tmp_path_factory.mktemp("openvino-camera")
    cache = tmp_path_factory.mktemp("freeze-cache-camera")
    return freeze_runtime("intel-openvino", out, cache_dir=cache)


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
