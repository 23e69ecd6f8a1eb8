"""Camera pixel formats to BGR without OpenCV, checked against FFmpeg's own conversion.

FFmpeg makes the frames a V4L2 webcam delivers (packed YUYV 4:2:2 and MJPEG) from its test
pattern and converts them to BGR itself; our numpy/simplejpeg result must agree within a few
levels (rounding of the fixed-point matrix; JPEG chroma upsampling differs at sharp edges).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.inference.errors import SourceError
from appliance.inference.sources import libyuv
from appliance.inference.sources.pixels import (
    grey_to_bgr,
    mjpeg_to_bgr,
    to_bgr,
    yuyv_to_bgr,
    yuyv_to_bgr_numpy,
)

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")
W, H = 640, 480


def ffmpeg(*args: str) -> bytes:
    assert FFMPEG is not None
    return subprocess.run(
        [FFMPEG, "-loglevel", "error", *args, "-"], check=True, capture_output=True, timeout=60
    ).stdout


def pattern(pix_fmt: str, fmt: str = "rawvideo", extra: tuple[str, ...] = ()) -> bytes:
    source = f"testsrc2=size={W}x{H}:rate=1"
    return ffmpeg(
        "-f", "lavfi", "-i", source, "-frames:v", "1", *extra, "-pix_fmt", pix_fmt, "-f", fmt
    )


def ffmpeg_bgr(data: bytes, tmp: Path, in_args: tuple[str, ...]) -> np.ndarray:
    src = tmp / "frame.in"
    src.write_bytes(data)
    out = ffmpeg(*in_args, "-i", str(src), "-pix_fmt", "bgr24", "-f", "rawvideo")
    return np.frombuffer(out, np.uint8).reshape(H, W, 3)


def test_yuyv_matches_ffmpeg(tmp_path: Path) -> None:
    yuyv = pattern("yuyv422")
    assert len(yuyv) == W * H * 2
    ours = yuyv_to_bgr(yuyv, W, H)
    ref = ffmpeg_bgr(yuyv, tmp_path, ("-f", "rawvideo", "-pix_fmt", "yuyv422", "-s", f"{W}x{H}"))
    diff = np.abs(ours.astype(np.int16) - ref)
    assert ours.shape == (H, W, 3) and ours.dtype == np.uint8
    assert diff.max() <= 4 and diff.mean() < 1.0, (diff.max(), diff.mean())


@pytest.mark.parametrize("convert", [yuyv_to_bgr, yuyv_to_bgr_numpy], ids=["default", "numpy"])
def test_yuyv_colours_are_in_bgr_order(convert: Any) -> None:
    # One pixel pair of pure BT.601 red (Y=81, U=90, V=240): R high, B low.
    red = bytes([81, 90, 81, 240])
    pixel = convert(red, 2, 1)[0, 0]
    assert pixel[2] > 240 and pixel[0] < 10 and pixel[1] < 10


def every_yuv_pair() -> bytes:
    """YUYV frame 64x(64*64): 64x64 (U, V) pairs over 16..240, each against a Y ramp 16..235.

    The limited range a V4L2 camera delivers. Outside it (out-of-gamut chroma with Y near 0 or
    255) OpenCV, libyuv and numpy clip intermediate values differently (up to 21 levels apart).
    """
    luma = np.linspace(16, 235, 64).round().astype(np.uint8)
    chroma = np.linspace(16, 240, 64).round().astype(np.uint8)
    u, v = np.meshgrid(chroma, chroma, indexing="ij")
    pairs = np.empty((64 * 64, 32, 4), np.uint8)  # rows of 32 pixel pairs
    pairs[..., 0] = luma[0::2][None, :]
    pairs[..., 2] = luma[1::2][None, :]
    pairs[..., 1] = u.reshape(-1, 1)
    pairs[..., 3] = v.reshape(-1, 1)
    return pairs.tobytes()


@pytest.mark.parametrize("convert", [yuyv_to_bgr, yuyv_to_bgr_numpy], ids=["default", "numpy"])
def test_yuyv_matches_opencv_on_every_colour(convert: Any) -> None:
    """OpenCV's COLOR_YUV2BGR_YUYV (BT.601 limited range) within 3 levels on every camera colour."""
    cv2 = pytest.importorskip("cv2")
    frame = every_yuv_pair()
    width, height = 64, 64 * 64
    ref = cv2.cvtColor(
        np.frombuffer(frame, np.uint8).reshape(height, width, 2), cv2.COLOR_YUV2BGR_YUYV
    )
    ours = convert(frame, width, height)
    diff = np.abs(ours.astype(np.int16) - ref)
    assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())


def test_libyuv_is_what_converts_here() -> None:
    """The build host (tools/bootstrap.sh: libyuv0) and every frozen x86-64 runtime have it."""
    assert libyuv.available(), "libyuv.so.0 not found: apt-get install libyuv0"
    frame = every_yuv_pair()
    out = libyuv.yuyv_to_bgr(np.frombuffer(frame, np.uint8), 64, 64 * 64)
    assert out is not None and out.shape == (64 * 64, 64, 3) and out.flags.c_contiguous


@pytest.mark.parametrize(("width", "height", "size"), [(3, 2, 12), (4, 2, 15), (0, 2, 0)])
def test_a_short_or_odd_yuyv_frame_is_a_source_error(width: int, height: int, size: int) -> None:
    with pytest.raises(SourceError, match="does not hold"):
        yuyv_to_bgr(bytes(size), width, height)


def test_mjpeg_matches_ffmpeg_and_opencv(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    jpeg = pattern("yuvj422p", "mjpeg", ("-q:v", "3"))
    assert jpeg[:2] == b"\xff\xd8"
    ours = mjpeg_to_bgr(jpeg)
    assert ours.shape == (H, W, 3)
    opencv = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(ours.astype(np.int16) - opencv).max() <= 2  # both are libjpeg-turbo
    ref = ffmpeg_bgr(jpeg, tmp_path, ())
    assert np.abs(ours.astype(np.int16) - ref).mean() < 2.0  # FFmpeg's own JPEG decoder


def test_grey_and_unknown_formats() -> None:
    grey = bytes(range(6))
    out = grey_to_bgr(grey, 3, 2)
    assert out.shape == (2, 3, 3) and (out[..., 0] == out[..., 2]).all() and out[1, 2, 1] == 5
    with pytest.raises(SourceError, match="NV12"):
        to_bgr("NV12", grey, 3, 2)


def test_short_or_corrupt_frames_are_source_errors() -> None:
    with pytest.raises(SourceError, match="does not hold 640x480"):
        yuyv_to_bgr(bytes(1000), W, H)
    with pytest.raises(SourceError, match="does not decode"):
        mjpeg_to_bgr(b"\xff\xd8\xff\xe0not a jpeg")


def test_numpy_resize_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    from appliance.inference.resize import resize_linear

    image = np.random.default_rng(1).integers(0, 256, (480, 640, 3), np.uint8)
    for width, height in ((96, 96), (224, 168), (700, 500)):
        ours = resize_linear(image, width, height)
        theirs = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        assert ours.shape == theirs.shape == (height, width, 3)
        assert np.abs(ours.astype(np.int16) - theirs).max() <= 2


def test_without_libyuv_numpy_converts_the_same_frame(tmp_path: Path) -> None:
    """A system without libyuv (hidden in a private mount namespace): numpy, same colours."""
    from tests.image.test_freeze_camera import WITHOUT_SYSTEM_LIBYUV, system_libyuv

    lib = system_libyuv()
    if lib is None or shutil.which("unshare") is None:
        pytest.skip("no system libyuv to hide, or no unshare")
    frame = tmp_path / "frame.yuyv"
    frame.write_bytes(every_yuv_pair())
    code = (
        "import sys, numpy as np\n"
        "from appliance.inference.sources import capabilities\n"
        "from appliance.inference.sources.pixels import yuyv_to_bgr, yuyv_to_bgr_numpy\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "same = (yuyv_to_bgr(data, 64, 4096) == yuyv_to_bgr_numpy(data, 64, 4096)).all()\n"
        "print(capabilities()['yuyv'], bool(same))\n"
    )
    cmd = ["unshare", "-m", "sh", "-c", WITHOUT_SYSTEM_LIBYUV, str(lib)]
    done = subprocess.run(
        [*cmd, sys.executable, "-c", code, str(frame)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["numpy", "True"]
