"""RTSP/H.264 with B-frames up to each IDR: every picture in display order, none repeated.

GStreamer's x264enc with 3 B-frames and an IDR every 8 frames ends a GOP with a P decoded
before the B-frames shown ahead of it: that P is held for reordering when the next IDR arrives,
and openh264 2.3.1 then returns it with the IDR's pixels (the test fails on 81a1dd6's reader:
a move of 8 px where one picture went missing). ``H264Decoder.decode_all`` takes it out first
and starts a fresh decoder at each IDR (``tests/inference/test_h264_files.py``: on files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.inference.sources import openh264
from appliance.inference.sources.rtsp import RtspSource
from tests.inference.rtsp_server import RtspServer

pytestmark = [
    pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3 (gi)"),
    pytest.mark.skipif(not openh264.available(), reason="libopenh264-7 not installed"),
]


def shift(a: np.ndarray, b: np.ndarray) -> int:
    """The horizontal move from a to b (the frame edges left out)."""
    return min(
        range(-12, 13),
        key=lambda k: float(np.abs(np.roll(a, k, axis=1)[:, 16:-16] - b[:, 16:-16]).mean()),
    )


def test_b_frames_up_to_each_idr_come_out_in_display_order() -> None:
    """A pattern moving 4 px a frame, an IDR every 8: each picture moved 4 px on the last."""
    args = ("--profile", "high", "--bframes", "3", "--motion", "4", "--bitrate", "4000")
    with RtspServer(*args, "--gop", "8") as server:
        source = RtspSource(server.url())
        try:
            images = [f.image.astype(int) for f in (source.read() for _ in range(20)) if f]
        finally:
            source.close()
    assert len(images) == 20
    assert [shift(images[i], images[i + 1]) for i in range(19)] == [-4] * 19
