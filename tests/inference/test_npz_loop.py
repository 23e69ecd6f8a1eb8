"""``npz:FILE?loop=1&fps=N``: a paced test-pattern camera that never ends (QEMU, demos)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.inference.errors import SourceError
from appliance.inference.sources import open_source


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.npz"
    images = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    np.savez_compressed(path, images=images)
    return path


def test_plain_npz_ends_after_one_pass(clip: Path) -> None:
    source = open_source(f"npz:{clip}")
    frames = [source.read() for _ in range(4)]
    assert [f.index for f in frames[:3] if f] == [0, 1, 2]
    assert frames[3] is None


def test_loop_replays_the_clip_forever(clip: Path) -> None:
    source = open_source(f"npz:{clip}?loop=1")
    frames = [source.read() for _ in range(10)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames if f] == list(range(10))
    assert np.array_equal(frames[9].image, frames[0].image)  # type: ignore[union-attr]


def test_fps_spaces_the_frames(clip: Path) -> None:
    source = open_source(f"npz:{clip}?loop=1&fps=40")
    times = []
    for _ in range(5):
        frame = source.read()
        assert frame is not None
        times.append(frame.captured)
    gaps = np.diff(times)
    assert (gaps >= 0.025 * 0.9).all(), gaps  # sleep never returns early: a lower bound only


def test_bad_fps_and_empty_clip_are_source_errors(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="fps"):
        open_source(f"npz:{clip}?fps=fast")
    empty = tmp_path / "empty.npz"
    np.savez_compressed(empty, images=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(SourceError, match="empty"):
        open_source(f"npz:{empty}?loop=1")
