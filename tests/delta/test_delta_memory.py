"""Apply memory of a delta chunk is O(chunk), not O(reference): R is read piecewise."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from appliance.bundle.delta import MAX_REFERENCE, Extent, encode_chunk
from appliance.bundle.delta_apply import BaseSlot

MIB = 1 << 20
OUT = 1 * MIB  # the default bundle chunk size


def _base(path: Path) -> np.ndarray:
    """A base a little larger than MAX_REFERENCE, every byte position distinguishable."""
    idx = np.arange(MAX_REFERENCE + 2 * MIB, dtype=np.uint64)
    data = ((idx * 2654435761) >> 7).astype(np.uint8)
    path.write_bytes(data.tobytes())
    return data


def _chunk_with_full_reference(base: np.ndarray) -> tuple[bytes, bytes]:
    """A chunk whose extents add up to MAX_REFERENCE and whose controls read all over R.

    Returns (wire, expected output), the latter computed from R materialised in full.
    """
    half = MAX_REFERENCE // 2
    extents = [Extent(0, half), Extent(half + MIB, half)]  # R skips one MiB of the base
    ref = np.concatenate([base[:half], base[half + MIB : half + MIB + half]])
    n = 192 << 10
    # R positions of the add spans: start, across the extent boundary, the very end, back again.
    starts = [0, half - (64 << 10), MAX_REFERENCE - n, 5 * MIB + 17]
    copy = (OUT - n * len(starts)) // len(starts)
    rng = np.random.default_rng(3)
    controls: list[tuple[int, int, int]] = []
    diffs, extras, out = [], [], []
    for k, at in enumerate(starts):
        nxt = starts[k + 1] if k + 1 < len(starts) else at + n
        controls.append((n, copy, nxt - (at + n)))
        diff = rng.integers(0, 4, n, dtype=np.uint8)  # small: like nudged weights
        extra = rng.integers(0, 256, copy, dtype=np.uint8)
        diffs.append(diff)
        extras.append(extra)
        out += [ref[at : at + n] + diff, extra]
    wire = encode_chunk(
        extents, controls, np.concatenate(diffs).tobytes(), np.concatenate(extras).tobytes(), 3
    )
    expected = np.concatenate(out).tobytes()
    assert len(expected) == OUT
    return wire, expected


def test_rebuild_is_exact_and_memory_does_not_grow_with_the_reference(tmp_path: Path) -> None:
    base = _base(tmp_path / "base")
    wire, expected = _chunk_with_full_reference(base)
    with BaseSlot(tmp_path / "base") as slot:
        slot.rebuild(wire, OUT, base.size, "warm-up")  # imports and first-call caches
        tracemalloc.start()
        try:
            got = slot.rebuild(wire, OUT, base.size, "measured")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert got == expected
    # Output buffer + its bytes copy + the decompressed body + the wire: ~3 chunks. Holding R
    # (16 MiB) would be 5x this bound.
    assert peak < 4 * OUT, f"apply peak {peak / MIB:.1f} MiB for a {MAX_REFERENCE / MIB:.0f} MiB R"


@pytest.mark.parametrize("start", [0, MAX_REFERENCE - 4096])
def test_read_past_the_base_end_is_a_base_error(tmp_path: Path, start: int) -> None:
    """A base shorter than an extent claims (a truncated slot) fails before any write."""
    from appliance.bundle.delta import DeltaBaseError

    (tmp_path / "base").write_bytes(bytes(MAX_REFERENCE - 2048))
    wire = encode_chunk([Extent(start, 4096)], [(4096, 0, 0)], bytes(4096), b"", 1)
    with BaseSlot(tmp_path / "base") as slot:
        if start == 0:
            assert slot.rebuild(wire, 4096, MAX_REFERENCE, "ok") == bytes(4096)
        else:
            with pytest.raises(DeltaBaseError, match="base ends"):
                slot.rebuild(wire, 4096, MAX_REFERENCE, "short base")
