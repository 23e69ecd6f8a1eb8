"""Delta chunk frames: lane-shuffled zstd and xz (smaller on model diffs), safely decoded."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import numpy as np
import pytest

from appliance.bundle.delta import (
    MAGIC_SHUFFLED,
    DeltaError,
    Extent,
    encode_chunk,
    shuffle4,
    unshuffle4,
    xz_compress,
)
from appliance.bundle.delta_apply import BaseSlot, parse_chunk

N = 256 << 10  # output bytes of the test chunk


def _weights(tuned: bool) -> bytes:
    """float32 weights; 'tuning' nudges each one (the diff is noise in the low mantissa bytes)."""
    w = np.random.default_rng(5).normal(0.0, 0.05, N // 4).astype(np.float32)
    if tuned:
        w = (w + np.random.default_rng(6).normal(0.0, 0.00025, w.size)).astype(np.float32)
    return w.tobytes()


def _diff() -> bytes:
    new = np.frombuffer(_weights(True), np.uint8)
    old = np.frombuffer(_weights(False), np.uint8)
    return (new - old).tobytes()


def _wire(frame: bytes, n_ctrl: int = 1) -> bytes:
    """A chunk of one extent over the base's first N bytes with a hand-made frame."""
    return struct.pack("<4sIII", b"EKD1", 1, n_ctrl, len(frame)) + struct.pack("<QI", 0, N) + frame


def _body() -> bytes:
    return struct.pack("<IIq", N, 0, 0) + _diff()


def test_model_diff_chunk_is_lane_shuffled_smaller_and_rebuilds_exactly(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.write_bytes(_weights(False))
    ctl = [(N, 0, 0)]
    best = encode_chunk([Extent(0, N)], ctl, _diff(), b"", 19)
    plain = encode_chunk([Extent(0, N)], ctl, _diff(), b"", 19, xz=False)
    assert best[:4] == MAGIC_SHUFFLED and plain[:4] == b"EKD1"
    assert len(best) < 0.9 * len(plain)
    with BaseSlot(base) as slot:
        assert slot.rebuild(best, N, N, "shuffled chunk") == _weights(True)
        assert slot.rebuild(plain, N, N, "zstd chunk") == _weights(True)
        assert slot.rebuild(_wire(xz_compress(_body())), N, N, "xz chunk") == _weights(True)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 4099])
def test_shuffle4_round_trips(n: int) -> None:
    data = bytes(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8))
    lanes = shuffle4(data)
    assert unshuffle4(lanes) == data and len(lanes) == n
    if n >= 8:
        assert lanes[:2] == data[0:1] + data[4:5]


def test_incompressible_or_tiny_bodies_stay_zstd() -> None:
    wire = encode_chunk([], [(0, 4096, 0)], b"", bytes(4096), 19)
    assert wire[16:20] == b"\x28\xb5\x2f\xfd"  # zstd frame magic


def _xz(data: bytes, dict_size: int = 1 << 16) -> bytes:
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=filters)


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (_xz(_body())[:-9], "truncated"),
        (_xz(_body()) + b"\0" * 8, "follow the xz stream"),
        (_xz(_body() + bytes(2 * N)), "holds more than"),
        (_xz(_body(), dict_size=256 << 20), "does not decompress"),  # asks for too much memory
        (b"\xfd7zXZ\x00" + b"\0" * 40, "does not decompress"),
    ],
)
def test_bad_xz_frames_are_delta_errors(frame: bytes, match: str) -> None:
    with pytest.raises(DeltaError, match=match):
        parse_chunk(_wire(frame), N, N, "test chunk")


def test_good_hand_made_xz_frame_parses() -> None:
    parsed = parse_chunk(_wire(_xz(_body())), N, N, "test chunk")
    assert parsed.body == _body()
