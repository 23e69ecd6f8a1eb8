"""H.264 video files without OpenCV or ffmpeg: MP4/MOV demuxed in Python, decoded by openh264.

Every file is made here by the host's ffmpeg (libx264: Baseline, Main, High with B-frames;
faststart and not; 640x480 and odd sizes; an Annex B ``.h264``; libx265 for an HEVC file this
reader must refuse), and every picture is compared with ffmpeg's own decode of the same file:
same count, same presentation order, a small mean difference (two YUV->BGR conversions).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.errors import SourceError
from appliance.inference.sources import H264FileSource, frames, open_source, openh264
from appliance.inference.sources.mp4 import Mp4H264Track, NotH264File
from tests.inference.test_sources_no_opencv import BLOCKER, run_without, source_errors_bare

FFMPEG = shutil.which("ffmpeg")


@functools.cache
def encoders() -> str:
    if FFMPEG is None:
        return ""
    return subprocess.run(
        [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False
    ).stdout


pytestmark = [
    pytest.mark.skipif("libx264" not in encoders(), reason="ffmpeg with libx264 not installed"),
    pytest.mark.skipif(not openh264.available(), reason="libopenh264-7 not installed"),
]


def encode(path: Path, size: str, count: int, *args: str, rate: int = 30) -> Path:
    assert FFMPEG is not None
    src = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-frames:v", str(count)]
    cmd = [FFMPEG, "-loglevel", "error", "-y", *src, "-pix_fmt", "yuv420p", *args, str(path)]
    subprocess.run(cmd, check=True, timeout=120)
    return path


def ffmpeg_decode(path: Path, width: int, height: int) -> np.ndarray:
    assert FFMPEG is not None
    raw = subprocess.run(
        [FFMPEG, "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


X264 = ["-c:v", "libx264", "-g", "12"]


@pytest.mark.parametrize(
    ("name", "size", "args"),
    [
        ("baseline.mp4", "640x480", [*X264, "-profile:v", "baseline"]),  # moov after mdat
        ("main.mp4", "640x480", [*X264, "-profile:v", "main", "-movflags", "+faststart"]),
        ("high-bframes.mov", "642x362", [*X264, "-profile:v", "high", "-bf", "3"]),
        ("high-bframes.h264", "640x360", [*X264, "-profile:v", "high", "-bf", "3"]),
    ],
)
def test_pictures_match_ffmpegs_in_presentation_order(
    tmp_path: Path, name: str, size: str, args: list[str]
) -> None:
    video = encode(tmp_path / name, size, 30, *args)
    width, height = map(int, size.split("x"))
    source = H264FileSource(str(video), video)  # what open_source picks without OpenCV
    assert not source.live
    got = list(frames(source))
    source.close()
    want = ffmpeg_decode(video, width, height)
    assert len(got) == len(want) == 30
    assert [f.index for f in got] == list(range(30))
    assert all(f.color == "BGR" and f.image.shape == (height, width, 3) for f in got)
    diffs = [np.abs(f.image.astype(np.int16) - w).mean() for f, w in zip(got, want, strict=True)]
    assert max(diffs) < 2.0, diffs  # libyuv vs swscale, both BT.601 limited range
    # each picture is nearest to ffmpeg's picture of the same position: display order
    nearest = [
        int(np.argmin([np.abs(f.image.astype(np.int16) - w).mean() for w in want])) for f in got
    ]
    assert nearest == list(range(30))
    if video.suffix == ".mov":  # B-frames really there: decode order differs from display
        track = Mp4H264Track(video)
        assert np.any(np.diff(track.times) < 0) and track.profile == 100
        track.close()
    if name == "main.mp4":
        data = video.read_bytes()
        assert data.index(b"moov") < data.index(b"mdat")  # faststart
    if name == "baseline.mp4":
        data = video.read_bytes()
        assert data.index(b"mdat") < data.index(b"moov")


def test_many_closed_gops_with_b_frames(tmp_path: Path) -> None:
    """30 IDRs with B-frames before each: every picture right (openh264 2.3.1 gives the picture
    held before an IDR the IDR's pixels, and runs out of buffers after a dozen mid-stream
    flushes: ``H264Decoder.decode_all`` starts a fresh decoder at each IDR)."""
    grain = "testsrc2=size=320x240:rate=30,noise=alls=12:allf=t"
    assert FFMPEG is not None
    video = tmp_path / "gops.mp4"
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", grain, "-frames:v", "240",
         "-pix_fmt", "yuv420p", *X264, "-g", "8", "-bf", "3", str(video)],
        check=True,
        timeout=120,
    )  # fmt: skip
    got = list(frames(H264FileSource(str(video), video)))
    want = ffmpeg_decode(video, 320, 240)
    assert len(got) == len(want) == 240
    diffs = [np.abs(f.image.astype(np.int16) - w).mean() for f, w in zip(got, want, strict=True)]
    assert max(diffs) < 2.5, diffs


def test_loop_and_fps_make_a_demo_camera(tmp_path: Path) -> None:
    video = encode(tmp_path / "clip.mp4", "160x120", 5, *X264, "-bf", "2")
    source = open_source(f"{video}?loop=1&fps=50")
    got = [source.read() for _ in range(12)]
    source.close()
    assert all(f is not None for f in got)
    shown = [f for f in got if f is not None]
    assert [f.index for f in shown] == list(range(12))
    assert np.array_equal(shown[5].image, shown[0].image)  # the second pass starts again
    assert np.array_equal(shown[11].image, shown[1].image)
    # paced: never ahead of the schedule (a lower bound only; sleep never returns early)
    assert shown[-1].captured - shown[0].captured >= 0.9 * 11 / 50


def test_realtime_paces_at_the_files_own_rate_and_is_live(tmp_path: Path) -> None:
    video = encode(tmp_path / "clip.mp4", "160x120", 8, *X264, rate=20)
    source = open_source(f"{video}?realtime=1&fps=0")  # fps=0: the file's own rate
    assert isinstance(source, H264FileSource) and source.live
    got = list(frames(source))
    source.close()
    assert len(got) == 8
    assert got[-1].captured - got[0].captured >= 0.9 * 7 / 20
    # an Annex B stream has no times: realtime paces it at 25 fps, as FFmpeg assumes
    raw = encode(tmp_path / "clip.h264", "160x120", 6, *X264)
    source = open_source(f"{raw}?realtime=1&fps=0")  # fps=0: its default rate
    assert isinstance(source, H264FileSource) and source.live
    got = list(frames(source))
    source.close()
    assert len(got) == 6
    assert got[-1].captured - got[0].captured >= 0.9 * 5 / 25


@pytest.mark.skipif("libx265" not in encoders(), reason="ffmpeg without libx265")
def test_hevc_goes_to_opencv_or_is_a_clear_error(tmp_path: Path) -> None:
    video = encode(tmp_path / "hevc.mp4", "96x64", 4, "-c:v", "libx265", "-tag:v", "hvc1",
                   "-x265-params", "log-level=error")  # fmt: skip
    with pytest.raises(NotH264File, match=r"hevc\.mp4: the video track is H.265/HEVC \('hvc1'\)"):
        H264FileSource(str(video), video)
    source = open_source(str(video))  # OpenCV (or the ffmpeg program) decodes HEVC
    assert not isinstance(source, H264FileSource)
    assert len(list(frames(source))) == 4
    source.close()
    out = "\n".join(source_errors_bare(tmp_path, str(video)))
    assert out.startswith(f"SourceError: {video}: the video track is H.265/HEVC ('hvc1')"), out
    assert "needs OpenCV or an ffmpeg program" in out and "convert the file to H.264" in out


def test_cli_runs_an_mp4_without_opencv_or_ffmpeg(tmp_path: Path, tiny_package: Path) -> None:
    """``appliance run --source FILE.mp4`` in a runtime with neither OpenCV nor ffmpeg."""
    video = encode(tmp_path / "clip.mp4", "320x240", 12, *X264, "-profile:v", "high", "-bf", "2")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=("cv2",)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
        "PATH": "",  # no ffmpeg program
    }
    env.pop("EDGEKILN_FFMPEG", None)
    cli = [sys.executable, "-m", "appliance.cli"]
    sink = tmp_path / "results.jsonl"
    args = ["run", "--model", str(tiny_package), "--source", str(video), "--sink", str(sink)]
    done = subprocess.run(
        [*cli, *args, "--max-frames", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in sink.read_text().splitlines()]
    results = [r for r in records if r.get("type") == "result"]
    assert len(results) == 5 and not any(r.get("degraded") for r in results), records
    # what `appliance info` reports as camera.h264_files (its library probe cannot run under
    # this import blocker, which raises where a runtime without cv2 answers "not found")
    code = "from appliance.inference.sources import capabilities; print(capabilities())"
    info = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "'h264_files': 'openh264'" in info.stdout and "'streams': 'mjpeg-http'" in info.stdout


def test_a_file_without_openh264_goes_to_the_other_readers(tmp_path: Path) -> None:
    """A system without libopenh264 (a dev venv): OpenCV or ffmpeg read the file as before."""
    video = encode(tmp_path / "clip.mp4", "96x64", 3, *X264)
    out = run_without(
        tmp_path,
        ("cv2",),
        f"""
        from appliance.inference.sources import frames, open_source, openh264
        openh264._load = lambda: None  # as on a system without libopenh264-7
        source = open_source({str(video)!r})
        print(type(source).__name__, len(list(frames(source))))
        """,
    )
    assert out.split() == ["FfmpegPipeSource", "3"]


def test_opencv_goes_first_where_the_runtime_has_it(tmp_path: Path) -> None:
    """FFmpeg's decoder is faster on Main/High (README): OpenCV reads the file where present;
    ``loop``/``fps`` take this reader even then."""
    pytest.importorskip("cv2")
    video = encode(tmp_path / "clip.mp4", "96x64", 3, *X264)
    plain = open_source(str(video))
    assert type(plain).__name__ == "CvCaptureSource"
    plain.close()
    looped = open_source(f"{video}?loop=1")
    assert isinstance(looped, H264FileSource)
    looped.close()


def test_open_errors_name_the_file(tmp_path: Path) -> None:
    video = encode(tmp_path / "clip.mp4", "96x64", 2, *X264)
    for fps in ("fast", "inf", "nan", "-1"):
        with pytest.raises(SourceError, match=r"clip\.mp4.*fps must be a number"):
            open_source(f"{video}?fps={fps}")
