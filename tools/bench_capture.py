"""Benchmark per-frame camera conversion cost without OpenCV against OpenCV, same run.

    .venv/bin/python tools/bench_capture.py [--size 640x480] [--frames 30] [--repeat 7]

FFmpeg makes the frames a V4L2 webcam delivers (packed YUYV 4:2:2 and MJPEG, from its
``testsrc2`` pattern). Each round converts every frame to BGR with our runtime's code
(``appliance.inference.sources.pixels``: libyuv for YUYV, and numpy, the fallback where libyuv is
missing, on its own row; simplejpeg for MJPEG) and with what
OpenCV's own V4L2 capture does with the same buffer (``cv2.cvtColor(COLOR_YUV2BGR_YUYV)``,
``cv2.imdecode``), alternating, and prints the median per-frame milliseconds and the ratio
ours/OpenCV. The kernel side (DQBUF/QBUF, the copy out of the mmap ring) is not in it: no V4L2
device exists on the build host, and it is the same ioctls either way.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.inference.sources import libyuv  # noqa: E402
from appliance.inference.sources.pixels import (  # noqa: E402
    mjpeg_to_bgr,
    yuyv_to_bgr,
    yuyv_to_bgr_numpy,
)


def make_frames(fmt: str, width: int, height: int, count: int) -> list[bytes]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        sys.exit("bench_capture: ffmpeg is needed to make the camera frames")
    src = ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30"]
    if fmt == "YUYV":
        cmd = [*src, "-frames:v", str(count), "-pix_fmt", "yuyv422", "-f", "rawvideo", "-"]
        raw = subprocess.run(
            [ffmpeg, "-loglevel", "error", *cmd], check=True, capture_output=True
        ).stdout
        size = width * height * 2
        return [raw[i : i + size] for i in range(0, len(raw), size)]
    frames = []
    for i in range(count):  # one JPEG per frame, as an MJPEG camera hands them over
        cmd = [*src, "-vf", f"select=eq(n\\,{i})", "-frames:v", "1", "-pix_fmt", "yuvj422p"]
        frames.append(
            subprocess.run(
                [ffmpeg, "-loglevel", "error", *cmd, "-q:v", "3", "-f", "mjpeg", "-"],
                check=True,
                capture_output=True,
            ).stdout
        )
    return frames


def per_frame_ms(convert: Callable[[bytes], np.ndarray], frames: list[bytes]) -> float:
    t0 = time.perf_counter()
    for frame in frames:
        convert(frame)
    return (time.perf_counter() - t0) * 1000 / len(frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    import cv2

    cv2.setNumThreads(1)  # V4L2 capture converts on the grabbing thread: compare one core each
    if not libyuv.available():
        sys.exit("bench_capture: libyuv.so.0 is missing (apt-get install libyuv0)")

    def opencv_yuyv(b: bytes) -> np.ndarray:
        image = np.frombuffer(b, np.uint8).reshape(height, width, 2)
        return cv2.cvtColor(image, cv2.COLOR_YUV2BGR_YUYV)

    cases = {
        "YUYV": (lambda b: yuyv_to_bgr(b, width, height), opencv_yuyv),
        "YUYV/np": (lambda b: yuyv_to_bgr_numpy(b, width, height), opencv_yuyv),
        "MJPEG": (
            mjpeg_to_bgr,
            lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
        ),
    }
    print(f"{width}x{height}, {args.frames} frames, {args.repeat} alternating rounds")
    print(f"{'format':8}{'without OpenCV ms':>20}{'OpenCV ms':>12}{'ratio':>8}")
    for fmt, (ours, theirs) in cases.items():
        frames = make_frames(fmt.split("/")[0], width, height, args.frames)
        ours(frames[0]), theirs(frames[0])  # warm up (tables, libjpeg state)
        a, b = [], []
        for _ in range(args.repeat):
            a.append(per_frame_ms(ours, frames))
            b.append(per_frame_ms(theirs, frames))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{fmt:8}{ma:>20.2f}{mb:>12.2f}{ma / mb:>8.2f}")


if __name__ == "__main__":
    main()
