"""Device-side apply (delta_apply): grouped reads of R, in-place layout, repeated frames.

Each case rebuilds real wire chunks from a real base file through ``BaseSlot.rebuild`` and
compares with a byte-by-byte model of the bsdiff controls written independently here.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.bundle import delta_apply
from appliance.bundle.delta import (
    MAGIC,
    MAGIC_RUN,
    MAGIC_SHUFFLED,
    DeltaBaseError,
    DeltaError,
    Extent,
    encode_chunk,
)
from appliance.bundle.delta_apply import (
    DIFF_BLOCK,
    DIFF_SPAN,
    BaseSlot,
    add_diff,
    add_mod256,
    parse_chunk,
)

Control = tuple[int, int, int]


def model(base: bytes, extents: list[Extent], controls: list[Control], diff: bytes,
          extra: bytes) -> bytes:  # fmt: skip
    """The controls applied the slow, obvious way (the spec in delta.py's docstring)."""
    ref = b"".join(base[e.offset : e.offset + e.length] for e in extents)
    out = bytearray()
    pos = d = x = 0
    for add, copy, seek in controls:
        out += bytes((ref[pos + k] + diff[d + k]) & 0xFF for k in range(add))
        d += add
        out += extra[x : x + copy]
        x += copy
        pos += add + seek
    return bytes(out)


def random_chunk(rng: random.Random, base_size: int, out_len: int) -> tuple[
    list[Extent], list[Control], bytes, bytes
]:  # fmt: skip
    """Many short controls, seeks back and forth (spans overlap, far apart, unsorted)."""
    extents = [Extent(rng.randrange(0, base_size - 70000), rng.randrange(1, 70000))
               for _ in range(rng.randrange(1, 12))]  # fmt: skip
    r_len = sum(e.length for e in extents)
    controls: list[Control] = []
    pos = done = 0
    while done < out_len:
        room = out_len - done
        add = min(rng.choice([0, 1, 7, 100, 3000, 20000]), room, r_len - pos)
        copy = min(rng.choice([0, 0, 5, 300]), room - add)
        if add + copy == 0:  # always make progress
            copy = min(5, room)
        done += add + copy
        target = rng.randrange(0, r_len)  # the next control reads from anywhere in R
        controls.append((add, copy, target - (pos + add)))
        pos = target
    adds = sum(c[0] for c in controls)
    copies = sum(c[1] for c in controls)
    diff = bytes(rng.choice([0, 0, 0, 1, 255, rng.randrange(256)]) for _ in range(adds))
    return extents, controls, diff, rng.randbytes(copies)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = random.Random(5).randbytes(3 << 20)
    path = tmp_path_factory.mktemp("apply") / "base.img"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("seed", range(12))
def test_scattered_controls_rebuild_like_the_model(base: tuple[Path, bytes], seed: int) -> None:
    path, data = base
    rng = random.Random(seed)
    out_len = rng.choice([4096, 65536, 200_000])
    extents, controls, diff, extra = random_chunk(rng, len(data), out_len)
    wire = encode_chunk(extents, controls, diff, extra, level=3, xz=seed % 3 == 0)
    with BaseSlot(path) as slot:
        got = slot.rebuild(wire, out_len, len(data), f"seed {seed}")
    assert got == model(data, extents, controls, diff, extra)


def _ekd1_unchanged(offset: int, n: int) -> bytes:
    """An unchanged chunk as ekdelta1 writes it (one control, an all-zero diff, a zstd frame)."""
    import struct

    import zstandard

    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(
        struct.pack("<IIq", n, 0, 0) + bytes(n)
    )
    return struct.pack("<4sIIIQI", b"EKD1", 1, 1, len(frame), offset, n) + frame


def test_a_repeated_unchanged_frame_is_decoded_once_and_stays_exact(
    base: tuple[Path, bytes],
) -> None:
    path, data = base
    n = 1 << 20
    delta_apply._KNOWN.clear()
    with BaseSlot(path) as slot:
        for off in (0, 12345, 2 << 20):  # same frame bytes, different extents (ekdelta1)
            wire = _ekd1_unchanged(off, n)
            assert slot.rebuild(wire, n, len(data), "unchanged") == data[off : off + n]
        assert len(delta_apply._KNOWN) == 1
        # A small frame whose diff is not zero is remembered as such: the add still happens.
        ones = encode_chunk([Extent(7, n)], [(n, 0, 0)], b"\x01" * n, b"", level=19)
        parsed = parse_chunk(ones, n, len(data), "ones")
        assert not parsed.zero_diff
        expect = bytes((b + 1) & 0xFF for b in data[7 : 7 + n])
        assert slot.rebuild(ones, n, len(data), "ones") == expect
        assert slot.rebuild(ones, n, len(data), "ones again") == expect


def test_shuffled_lanes_unshuffle_in_place(base: tuple[Path, bytes]) -> None:
    path, data = base
    rng = random.Random(9)
    n = 64 << 10 | 3  # a tail of 3 bytes outside the 4-byte lanes
    # float32-like diff: low bytes noisy, high bytes still -> zstd keeps the lanes (EKD4)
    diff = bytes(rng.randrange(256) if i % 4 < 2 else 0 for i in range(n - 1000))
    extra = bytes(rng.randrange(4) for _ in range(1000))
    controls: list[Control] = [(n - 1000, 1000, 0)]
    wire = encode_chunk([Extent(4096, n)], controls, diff, extra, level=19, xz=True)
    assert wire[:4] == MAGIC_SHUFFLED
    with BaseSlot(path) as slot:
        got = slot.rebuild(wire, n, len(data), "lanes")
    assert got == model(data, [Extent(4096, n)], controls, diff, extra)


def test_threaded_encoding_gives_the_same_bytes_in_order(tmp_path: Path) -> None:
    from appliance.bundle.delta_encode import iter_delta_chunks

    from .kit import CHUNK, write_pair

    base, new = write_pair(tmp_path)
    one = list(iter_delta_chunks(base, new, CHUNK, level=3, workers=1))
    three = list(iter_delta_chunks(base, new, CHUNK, level=3, workers=3))
    assert one == three
    assert b"".join(chunk for chunk, _wire in three) == new.read_bytes()


def test_unchanged_runs_are_ekd0_chunks_without_a_frame(base: tuple[Path, bytes]) -> None:
    path, data = base
    n = 3 * 4096
    # R = three moved runs of the base, output front to back: extents only, 16 + 3 x 12 bytes.
    extents = [Extent(8192, 4096), Extent(1 << 20, 4096), Extent(40960, 4096)]
    controls: list[Control] = [(4096, 0, 0), (8192, 0, 0)]
    wire = encode_chunk(extents, controls, bytes(n), b"", level=19)
    assert wire[:4] == MAGIC_RUN and len(wire) <= 16 + 3 * 12  # no controls, no diff
    with BaseSlot(path) as slot:
        assert slot.rebuild(wire, n, len(data), "run") == model(data, extents, controls,
                                                                bytes(n), b"")  # fmt: skip
    # Not R as it is (a seek, a non-zero diff byte, extra bytes): a framed chunk as before.
    assert encode_chunk(extents, [(4096, 0, 4096), (8192, 0, 0)], bytes(n), b"")[:4] == MAGIC
    assert encode_chunk(extents, controls, bytes(n - 1) + b"\x01", b"")[:4] == MAGIC
    assert encode_chunk(extents, [(n, 1, 0)], bytes(n), b"x")[:4] == MAGIC


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (struct.pack("<4sIII", MAGIC_RUN, 0, 0, 0), "no extents"),
        (struct.pack("<4sIIIQI", MAGIC_RUN, 1, 1, 0, 0, 4096), "a control"),
        (struct.pack("<4sIIIQI", MAGIC_RUN, 1, 0, 4, 0, 4096) + b"\0" * 4, "a frame"),
        (struct.pack("<4sIIIQI", MAGIC_RUN, 1, 0, 0, 0, 4096) + b"\0", "a byte after it"),
        (struct.pack("<4sIIIQI", MAGIC_RUN, 1, 0, 0, 0, 4095), "one byte short"),
        (struct.pack("<4sIIIQI", MAGIC_RUN, 1, 0, 0, (3 << 20) - 4095, 4096), "past the base"),
    ],
)
def test_malformed_ekd0_chunks_are_refused(base: tuple[Path, bytes], wire: bytes, why: str) -> None:
    path, data = base
    with BaseSlot(path) as slot, pytest.raises(DeltaError):
        slot.rebuild(wire, 4096, len(data), why)


@pytest.mark.parametrize("n", [0, 1, 3, 4096, 65536 + 5, 200_001])
def test_add_mod256_matches_bytewise_addition(n: int) -> None:
    rng = random.Random(n)
    a, b = rng.randbytes(n), rng.randbytes(n)
    out = bytearray(a)
    add_mod256(memoryview(out), memoryview(b))
    assert bytes(out) == bytes((x + y) & 0xFF for x, y in zip(a, b, strict=True))


# Sparse diffs as bsdiff makes them: zero almost everywhere, non-zero bytes at the edges of
# spans and blocks, on both sides of a boundary, in the last (short) block, or nowhere.
_EDGES = [0, 1, DIFF_BLOCK - 1, DIFF_BLOCK, DIFF_SPAN - 1, DIFF_SPAN, DIFF_SPAN + DIFF_BLOCK]


@settings(max_examples=60, deadline=None)
@given(
    n=st.sampled_from([0, 1, DIFF_BLOCK, DIFF_SPAN - 3, DIFF_SPAN, 3 * DIFF_SPAN + 17]),
    start=st.integers(0, 9),
    nonzero=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(_EDGES), st.integers(0, 4 * DIFF_SPAN)), st.integers(1, 255)
        ),
        max_size=40,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_add_diff_matches_bytewise_addition_on_sparse_diffs(
    n: int, start: int, nonzero: list[tuple[int, int]], seed: int
) -> None:
    body = bytearray(start + n + 5)  # the diff sits inside a larger body, as in a chunk
    for at, value in nonzero:
        if at < n:
            body[start + at] = value
    body[:start] = b"\xff" * start  # bytes around the diff must not be added
    body[start + n :] = b"\xff" * 5
    a = random.Random(seed).randbytes(n)
    out = bytearray(a)
    for kind in (bytes, bytearray):
        out[:] = a
        add_diff(memoryview(out), kind(body), start)
        diff = body[start : start + n]
        assert bytes(out) == bytes((x + y) & 0xFF for x, y in zip(a, diff, strict=True))


def test_sparse_diff_chunk_rebuilds_like_the_model(base: tuple[Path, bytes]) -> None:
    """A real wire chunk whose diff is zero but for a few bytes around span and block edges."""
    path, data = base
    n = 3 * DIFF_SPAN + 100
    diff = bytearray(n)
    for at in (0, DIFF_BLOCK - 1, DIFF_BLOCK, DIFF_SPAN - 1, DIFF_SPAN + 5, n - 1):
        diff[at] = 0x80 | at % 127
    extents = [Extent(4096 * 3, n)]
    controls: list[Control] = [(n, 0, 0)]
    for level, xz in ((3, False), (19, True)):
        wire = encode_chunk(extents, controls, bytes(diff), b"", level=level, xz=xz)
        with BaseSlot(path) as slot:
            got = slot.rebuild(wire, n, len(data), "sparse diff")
        assert bytes(got) == model(data, extents, controls, bytes(diff), b"")


@pytest.mark.parametrize("lengths", [[4096], [4096, 8192, 1], [1 << 20, 4096], [5] * 300])
def test_runs_of_the_base_are_read_extent_by_extent(
    base: tuple[Path, bytes], lengths: list[int]
) -> None:
    """Unchanged runs (EKD0, and EKD1 with one control and an all-zero diff) of 1..300 extents."""
    path, data = base
    rng = random.Random(len(lengths))
    extents = [Extent(rng.randrange(0, len(data) - n), n) for n in lengths]
    n = sum(lengths)
    expect = b"".join(data[e.offset : e.offset + e.length] for e in extents)
    run = encode_chunk(extents, [(n, 0, 0)], bytes(n), b"", level=3)
    assert run[:4] == MAGIC_RUN
    longer = [*extents, Extent(0, 4096)]  # R longer than the chunk: its first n bytes
    zero = encode_chunk(longer, [(n, 0, 0)], bytes(n), b"", level=3)
    assert zero[:4] == MAGIC
    with BaseSlot(path) as slot:
        assert slot.rebuild(run, n, len(data), "run") == expect
        assert slot.rebuild(zero, n, len(data), "zero diff") == expect


def test_a_run_past_the_end_of_the_base_file_is_refused(tmp_path: Path) -> None:
    """The signed base size says 3 MiB, the file holds less: the read comes up short."""
    short = tmp_path / "short.img"
    short.write_bytes(random.Random(9).randbytes(2 << 20))
    extents = [Extent(0, 4096), Extent((2 << 20) - 100, 4096)]
    wire = encode_chunk(extents, [(8192, 0, 0)], bytes(8192), b"", level=3)
    with BaseSlot(short) as slot, pytest.raises(DeltaBaseError, match="base ends inside"):
        slot.rebuild(wire, 8192, 3 << 20, "past the end")


def test_ekd0_with_many_extents_packs_its_table_and_rebuilds(base: tuple[Path, bytes]) -> None:
    path, data = base
    # Files moved by different amounts: 200 runs of 4 KiB from all over the base.
    extents = [Extent((i * 7919 % 700) * 4096, 4096) for i in range(200)]
    n = 200 * 4096
    wire = encode_chunk(extents, [(n, 0, 0)], bytes(n), b"", level=19)
    assert wire[:4] == MAGIC_RUN and len(wire) < 16 + 200 * 12 // 2  # a zstd frame, packed
    with BaseSlot(path) as slot:
        got = slot.rebuild(wire, n, len(data), "packed run")
    assert got == b"".join(data[e.offset : e.offset + e.length] for e in extents)
    # The frame must declare exactly the table: one extent short is refused.
    import zstandard

    short = zstandard.ZstdCompressor().compress(struct.pack("<QI", 0, 4096) * 199)
    bad = struct.pack("<4sIII", MAGIC_RUN, 200, 0, len(short)) + short
    with BaseSlot(path) as slot, pytest.raises(DeltaError):
        slot.rebuild(bad, n, len(data), "short table")
