"""MP4 and Annex B files are untrusted bytes: every damage is a SourceError naming the file.

A small real MP4 (x264 Baseline, made by ffmpeg here) is damaged the ways files get damaged or
crafted: cut short, box sizes that lie (past the end, 0, a 64-bit size, less than a header),
sample tables that disagree, chunk offsets past the end, a NAL length past its sample, a slice
the decoder refuses, no video track, not an MP4 at all. Then hypothesis mutates it at random:
whatever the bytes, the demuxer ends in a value or a SourceError, never an IndexError,
MemoryError or hang.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.errors import SourceError
from appliance.inference.sources import H264FileSource, openh264
from appliance.inference.sources.annexb import AnnexBStream
from appliance.inference.sources.mp4 import Mp4H264Track, NotH264File

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed")


def make(path: Path, *args: str, source: str = "testsrc2=size=96x64:rate=10") -> bytes:
    assert FFMPEG is not None
    src = ["-f", "lavfi", "-i", source, "-frames:v", "6"]
    subprocess.run(
        [FFMPEG, "-loglevel", "error", "-y", *src, *args, str(path)], check=True, timeout=60
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 6-frame x264 Baseline MP4, moov after mdat (ffmpeg's default)."""
    folder = tmp_path_factory.mktemp("mp4")
    x264 = ["-c:v", "libx264", "-profile:v", "baseline", "-pix_fmt", "yuv420p", "-g", "3"]
    return make(folder / "small.mp4", *x264)


def field(data: bytes, box: bytes, at: int) -> int:
    """Offset of the byte ``at`` bytes into ``box``'s payload (after its 8-byte header)."""
    return data.index(box) + 4 + at


def put32(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + struct.pack(">I", value) + data[pos + 4 :]


def read_all(path: Path) -> int:
    source = H264FileSource(str(path), path)
    count = 1
    while source.read() is not None:
        count += 1
    source.close()
    return count


def _sample(data: bytes, i: int, path: Path) -> tuple[int, int]:
    path.write_bytes(data)
    track = Mp4H264Track(path)
    where = int(track.offsets[i]), int(track.sizes[i])
    track.close()
    return where


def _damage_slice(data: bytes, offset: int, size: int) -> bytes:
    """The slice data of one sample overwritten (its NAL length and header kept)."""
    return data[: offset + 5] + b"\xff" * (size - 5) + data[offset + size :]


CASES: dict[str, tuple[Callable[[bytes, Path], bytes], str]] = {
    "cut in mdat": (lambda d, p: d[: len(d) // 2], r"b'mdat' at byte \d+ claims \d+ bytes"),
    "cut in moov": (lambda d, p: d[:-40], r"b'moov' at byte \d+ claims"),
    "empty": (lambda d, p: b"", "no moov box"),
    "moov past the end": (
        lambda d, p: put32(d, d.index(b"moov") - 4, len(d)),
        r"b'moov' at byte \d+ claims \d+ bytes; \d+ are left: truncated or damaged",
    ),
    "64-bit size past the end": (
        lambda d, p: d[: d.index(b"moov") - 4] + struct.pack(">I4sQ", 1, b"free", 1 << 63),
        r"b'free' at byte \d+ claims 9223372036854775808 bytes",
    ),
    "64-bit size cut short": (
        lambda d, p: d[: d.index(b"moov") - 4] + struct.pack(">I4s", 1, b"free") + b"\0\0",
        "the 64-bit size of box b'free'",
    ),
    "size below a header": (lambda d, p: put32(d, d.index(b"stsd") - 4, 4), r"b'stsd' .*claims 4"),
    "size 0 inside moov": (lambda d, p: put32(d, d.index(b"stsz") - 4, 0), r"stco|chunk|stsz|box"),
    "stsd past its parent": (
        lambda d, p: put32(d, d.index(b"stsd") - 4, 1 << 20),
        r"box b'stsd' in stbl claims 1048576 bytes",
    ),
    "stts count != stsz count": (
        lambda d, p: put32(d, field(d, b"stts", 8), 7),
        "the stts box covers 7 samples, the stsz box 6",
    ),
    "stsz count too large": (
        lambda d, p: put32(d, field(d, b"stsz", 8), 1 << 30),
        r"1073741824 samples \(more than 4000000 allowed\)",
    ),
    "stsz claims more than it holds": (
        lambda d, p: put32(d, field(d, b"stsz", 8), 100),
        "the stsz box claims 100 samples and holds fewer",
    ),
    "chunk offset past the end": (
        lambda d, p: put32(d, field(d, b"stco", 8), 0x7FFF0000),
        r"chunk 1 starts at byte 2147418112, past the end of the file",
    ),
    "sample past the end": (
        lambda d, p: put32(d, field(d, b"stco", 8), len(d) - 10),
        r"sample \d+ ends at byte \d+, past the end of the file",
    ),
    "stsc starting at chunk 2": (
        lambda d, p: put32(d, field(d, b"stsc", 8), 2),
        r"the stsc box \(samples per chunk\) is inconsistent",
    ),
    "NAL length size 3": (
        lambda d, p: d[: field(d, b"avcC", 4)] + b"\xfe" + d[field(d, b"avcC", 5) :],
        "NAL length size of 3 bytes",
    ),
    "NAL length past its sample": (
        lambda d, p: put32(d, _sample(d, 1, p)[0], 1 << 20),
        r"sample 1 \(byte \d+\): a NAL unit of 1048576 bytes runs past the sample's end",
    ),
    "damaged slice": (
        lambda d, p: _damage_slice(d, *_sample(d, 2, p)),
        r"openh264 refused access unit 2 \(byte \d+\)",
    ),
    "stsd without an entry": (
        lambda d, p: put32(d, d.index(b"stsd") - 4, 16),
        "the stsd box holds no sample description",
    ),
    "timescale 0": (lambda d, p: put32(d, field(d, b"mdhd", 12), 0), "timescale is 0"),
    "no avcC": (lambda d, p: d.replace(b"avcC", b"xxxx"), "no avcC box in the avc1 sample entry"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_mp4_is_a_source_error_naming_the_file(
    small: bytes, tmp_path: Path, case: str
) -> None:
    if case == "damaged slice" and not openh264.available():
        pytest.skip("libopenh264-7 not installed")
    damage, message = CASES[case]
    path = tmp_path / "damaged.mp4"
    damaged = damage(small, tmp_path / "probe.mp4")
    assert damaged != small
    path.write_bytes(damaged)
    with pytest.raises(SourceError, match=message) as caught:
        if openh264.available():
            read_all(path)
        else:
            track = Mp4H264Track(path)
            for i in range(len(track)):
                track.sample(i)
    assert str(caught.value).startswith(f"{path}: "), caught.value


def test_the_undamaged_file_reads(small: bytes, tmp_path: Path) -> None:
    """The corpus's base file is sound: each error above comes from its damage."""
    path = tmp_path / "small.mp4"
    path.write_bytes(small)
    track = Mp4H264Track(path)
    assert len(track) == 6 and track.codec == "avc1" and track.nal_length == 4
    track.close()
    if openh264.available():
        assert read_all(path) == 7  # 6 frames, then None


def test_no_video_track_and_not_an_mp4(tmp_path: Path) -> None:
    audio = tmp_path / "audio.mp4"
    make(audio, "-c:a", "aac", source="sine=duration=0.3")
    with pytest.raises(SourceError, match=r"audio\.mp4: no video track"):
        Mp4H264Track(audio)
    text = tmp_path / "notes.mp4"
    text.write_bytes(b"this is not a video at all" * 10)
    with pytest.raises(NotH264File, match=r"notes\.mp4: not an MP4/MOV \(ISO BMFF\) file"):
        Mp4H264Track(text)
    raw = tmp_path / "notes.h264"
    raw.write_bytes(b"this is not a video at all" * 10)
    with pytest.raises(SourceError, match=r"notes\.h264: not an H.264 Annex B stream"):
        AnnexBStream(raw)


MUTATIONS = st.lists(
    st.tuples(
        st.floats(0, 1, exclude_max=True),  # where, as a fraction of the file
        st.sampled_from([b"\0\0\0\0", b"\0\0\0\1", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff"])
        | st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=300,
    deadline=5000,  # milliseconds per example: a hang or a quadratic walk fails here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(mutations=MUTATIONS, cut=st.one_of(st.none(), st.floats(0, 1)), moov_only=st.booleans())
def test_mutated_mp4_is_a_value_or_a_source_error(
    small: bytes,
    tmp_path: Path,
    mutations: list[tuple[float, bytes]],
    cut: float | None,
    moov_only: bool,
) -> None:
    data = bytearray(small)
    start = small.index(b"moov") - 4 if moov_only else 0  # the tables are where lies hurt
    for where, value in mutations:
        pos = start + int(where * (len(data) - start))
        data[pos : pos + len(value)] = value
    if cut is not None:
        del data[int(cut * len(data)) :]
    path = tmp_path / "fuzz.mp4"
    path.write_bytes(bytes(data))
    try:
        track = Mp4H264Track(path)
    except SourceError:
        return
    try:
        for i in range(len(track)):
            track.sample(i)
    except SourceError:
        pass
    finally:
        track.close()


@settings(
    max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    nals=st.lists(
        st.binary(min_size=1, max_size=300).filter(
            lambda b: b[0] != 0 and b[-1] != 0 and b"\0\0" not in b
        ),
        min_size=1,
        max_size=40,
    ),
    long_codes=st.lists(st.booleans(), min_size=40, max_size=40),
    noise=st.binary(max_size=200),
)
def test_annexb_splits_what_was_joined(
    tmp_path: Path, nals: list[bytes], long_codes: list[bool], noise: bytes
) -> None:
    """NAL units joined with 3- or 4-byte start codes come back whole, in order; random bytes
    after them end in units or a SourceError."""
    body = b"".join(
        (b"\0\0\0\1" if long else b"\0\0\1") + n for n, long in zip(nals, long_codes, strict=False)
    )
    path = tmp_path / "fuzz.h264"
    path.write_bytes(body)
    stream = AnnexBStream(path)
    joined = b"".join(unit for _, unit in stream.units())
    stream.close()
    assert joined == b"".join(b"\0\0\0\1" + n for n in nals)
    path.write_bytes(body + noise)
    stream = AnnexBStream(path)
    try:
        for _ in stream.units():
            pass
    except SourceError:
        pass
    finally:
        stream.close()
