"""Benchmark RTSP/H.264 reading: our Python client + openh264 + libyuv against OpenCV CAP_FFMPEG.

    .venv/bin/python tools/bench_rtsp.py [--sizes 640x480,1280x720] [--frames 150] [--repeat 3]

For each size, GStreamer's RTSP server (``tests/inference/rtsp_server.py``, system python3)
serves a moving SMPTE pattern, x264 baseline at 30 fps, one IDR a second. Each reader runs in
its own child process (so its CPU time is its own: ``getrusage``), reads 15 frames to warm up,
then ``--frames`` frames, both over RTSP/TCP (OpenCV gets ``rtsp_transport;tcp``); readers
alternate, ``--repeat`` rounds. The stream is live, so both deliver ~30 fps: what differs is the
CPU each spends per frame (socket, depacketizing, decoding, converting to BGR); ``fps/core`` is
frames per CPU second, the rate one core could sustain. Prints a Markdown table (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(reader: str, url: str, frames: int) -> None:
    """Read ``frames`` frames with one reader; print wall and CPU seconds as JSON."""
    from appliance.inference.sources.opencv import CvCaptureSource
    from appliance.inference.sources.rtsp import RtspSource

    if reader == "opencv":
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
        source: RtspSource | CvCaptureSource = CvCaptureSource(url, url, "ffmpeg", live=True)
    else:
        source = RtspSource(url)
    shape = None
    for _ in range(15):
        frame = source.read()
    t0, c0 = time.monotonic(), _cpu()
    for _ in range(frames):
        frame = source.read()
        assert frame is not None
        shape = frame.image.shape
    wall, cpu = time.monotonic() - t0, _cpu() - c0
    source.close()
    print(json.dumps({"wall": wall, "cpu": cpu, "shape": shape}))


def run(reader: str, url: str, frames: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", reader, url, str(frames)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("READER", "URL", "FRAMES"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    from tests.inference.rtsp_server import RtspServer

    print("| size | reader | fps delivered | CPU ms / frame | fps / core | vs OpenCV |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes.split(","):
        pixels = int(size.split("x")[0]) * int(size.split("x")[1])
        bitrate = str(max(1000, pixels * 30 // 100_000))  # ~2.8 Mbit/s at 720p30
        server = RtspServer(
            "--size", size, "--fps", "30", "--gop", "30", "--motion", "4", "--bitrate", bitrate
        )
        try:
            results: dict[str, list[dict[str, float]]] = {"ours": [], "opencv": []}
            for _ in range(args.repeat):
                for reader in ("ours", "opencv"):
                    results[reader].append(run(reader, server.url(), args.frames))
        finally:
            server.stop()
        cpu_ms = {
            r: statistics.median(1000 * x["cpu"] / args.frames for x in v)
            for r, v in results.items()
        }
        for reader, runs in results.items():
            fps = statistics.median(args.frames / x["wall"] for x in runs)
            name = "ours (Python RTSP + openh264 + libyuv)" if reader == "ours" else "OpenCV"
            print(
                f"| {size} | {name} | {fps:.1f} | {cpu_ms[reader]:.2f} | "
                f"{1000 / cpu_ms[reader]:.0f} | {cpu_ms[reader] / cpu_ms['opencv']:.2f} x |"
            )


if __name__ == "__main__":
    main()
