"""Delta chunks as xz streams (LZMA2, 4-byte contexts): smaller on model diffs, safely decoded."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import numpy as np
import pytest

from appliance.bundle.delta import (
    XZ_MAGIC,
    BaseSlot,
    DeltaError,
    Extent,
    encode_chunk,
    parse_chunk,
)

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


def test_model_diff_chunk_is_xz_smaller_and_rebuilds_exactly(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.write_bytes(_weights(False))
    ctl = [(N, 0, 0)]
    as_xz = encode_chunk([Extent(0, N)], ctl, _diff(), b"", 19)
    as_zstd = encode_chunk([Extent(0, N)], ctl, _diff(), b"", 19, xz=False)
    assert as_xz[28 : 28 + len(XZ_MAGIC)] == XZ_MAGIC  # 16-byte header + one 12-byte extent
    assert len(as_xz) < 0.95 * len(as_zstd)
    with BaseSlot(base) as slot:
        assert slot.rebuild(as_xz, N, N, "xz chunk") == _weights(True)
        assert slot.rebuild(as_zstd, N, N, "zstd chunk") == _weights(True)


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
        (XZ_MAGIC + b"\0" * 40, "does not decompress"),
    ],
)
def test_bad_xz_frames_are_delta_errors(frame: bytes, match: str) -> None:
    with pytest.raises(DeltaError, match=match):
        parse_chunk(_wire(frame), N, N, "test chunk")


def test_good_hand_made_xz_frame_parses() -> None:
    parsed = parse_chunk(_wire(_xz(_body())), N, N, "test chunk")
    assert parsed.body == _body()
