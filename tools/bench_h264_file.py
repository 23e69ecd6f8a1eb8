"""Benchmark H.264 video files: our MP4 demuxer + openh264 + libyuv against cv2.VideoCapture.

    .venv/bin/python tools/bench_h264_file.py [--size 640x480] [--profile main] [--frames 300]
        [--repeat 5] [--noise 4]

ffmpeg makes one file (libx264 at ``--profile``, B-frames as x264's default for Main/High,
one IDR every 30 frames, 30 fps, ``testsrc2`` with temporal noise of strength ``--noise`` so
the encoder has a camera's grain to spend bits on). Then, in this one process, the two readers
decode the whole file in turn, ``--repeat`` rounds, alternating which goes first: ours
(``H264FileSource``, what ``open_source`` picks in a runtime without OpenCV) and OpenCV 5's
``cv2.VideoCapture(path, CAP_FFMPEG)`` (FFmpeg's decoder, with its default threads). Per
frame: wall time, and CPU time of the whole process (``time.process_time``: FFmpeg's decoding
threads count). Prints a Markdown table of the medians and the ratio ours / OpenCV; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_file(path: Path, size: str, profile: str, frames: int, noise: int) -> None:
    src = f"testsrc2=size={size}:rate=30,noise=alls={noise}:allf=t"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src, "-frames:v", str(frames),
         "-pix_fmt", "yuv420p", "-c:v", "libx264", "-profile:v", profile, "-g", "30", str(path)],
        check=True,
        timeout=600,
    )  # fmt: skip


def ours(path: Path) -> int:
    from appliance.inference.sources import H264FileSource, frames

    source = H264FileSource(str(path), path)  # what open_source picks without OpenCV
    count = sum(1 for _ in frames(source))
    source.close()
    return count


def opencv(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    count = 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        count += 1
    cap.release()
    return count


def timed(reader: str, path: Path) -> tuple[float, float, int]:
    """(wall ms / frame, CPU ms / frame, frames) for one pass over the file."""
    t0, c0 = time.perf_counter(), time.process_time()
    count = ours(path) if reader == "ours" else opencv(path)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall * 1000 / count, cpu * 1000 / count, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--profile", default="main")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--noise", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench-{args.profile}-{args.size}.mp4"
        make_file(path, args.size, args.profile, args.frames, args.noise)
        size_kib = path.stat().st_size / 1024
        results: dict[str, list[tuple[float, float, int]]] = {"ours": [], "opencv": []}
        for reader in ("ours", "opencv"):  # warm-up: libraries loaded, file in the page cache
            timed(reader, path)
        for i in range(args.repeat):
            order = ("ours", "opencv") if i % 2 == 0 else ("opencv", "ours")
            for reader in order:
                results[reader].append(timed(reader, path))
    counts = {r: {c for _, _, c in v} for r, v in results.items()}
    wall = {r: statistics.median(w for w, _, _ in v) for r, v in results.items()}
    cpu = {r: statistics.median(c for _, c, _ in v) for r, v in results.items()}
    print(
        f"{args.size} H.264 {args.profile}, {args.frames} frames, {size_kib:.0f} KiB, "
        f"medians of {args.repeat} alternating rounds; frames read: {counts}"
    )
    print("| reader | wall ms / frame | CPU ms / frame | vs OpenCV (wall) | vs OpenCV (CPU) |")
    print("| --- | --- | --- | --- | --- |")
    for reader, name in (("ours", "ours (MP4 demuxer + openh264 + libyuv)"),
                         ("opencv", "OpenCV `cv2.VideoCapture` (CAP_FFMPEG)")):  # fmt: skip
        print(
            f"| {name} | {wall[reader]:.2f} | {cpu[reader]:.2f} | "
            f"{wall[reader] / wall['opencv']:.2f} x | {cpu[reader] / cpu['opencv']:.2f} x |"
        )


if __name__ == "__main__":
    main()
