"""MP4 / MOV files (ISO BMFF, ISO/IEC 14496-12) with H.264: the first video track's samples.

:class:`Mp4H264Track` reads the boxes a player needs and nothing else: the top-level boxes
(``moov`` before or after ``mdat``: faststart or not), then in ``moov`` the first ``trak``
whose handler is ``vide``: ``mdhd`` (timescale), ``stsd`` (the codec; for ``avc1``/``avc3``
the ``avcC`` record: SPS, PPS and the NAL length size), ``stsz`` (sample sizes), ``stco`` /
``co64`` and ``stsc`` (where each sample is), ``stts`` and ``ctts`` (decode and presentation
times). Only ``moov`` is read into memory (at most ``MAX_MOOV``); each sample is read when it
is needed (one ``pread``), turned from length-prefixed NAL units into Annex B, and handed to
the decoder with its presentation time.

Every byte is untrusted: a box whose size lies (past its parent or the file's end, 0 where it
cannot be, a 64-bit size), tables that disagree (sample counts, chunks, offsets past the end),
bounds on every count (``MAX_SAMPLES``, ``MAX_SAMPLE``) so nothing allocates what the file
claims: each is an :class:`Mp4Error` naming the file and the problem. A file that is fine but
not for this reader (another codec, a fragmented MP4, not ISO BMFF at all) is a
:class:`NotH264File`, which ``open_source`` hands to OpenCV or an ``ffmpeg`` program.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from appliance.inference.errors import SourceError

MAX_MOOV = 64 << 20  # the index of a day-long 30 fps recording is ~30 MiB
MAX_SAMPLES = 4_000_000  # 37 hours at 30 fps
MAX_SAMPLE = 8 << 20  # one encoded frame, as for RTSP (h264_rtp.MAX_ACCESS_UNIT)
MAX_TOP_BOXES = 10_000
START = b"\x00\x00\x00\x01"
TOP_LEVEL = {
    b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"uuid", b"meta", b"styp",
    b"sidx", b"moof", b"mfra", b"pnot", b"junk",
}  # fmt: skip
CODECS = {
    b"hvc1": "H.265/HEVC",
    b"hev1": "H.265/HEVC",
    b"av01": "AV1",
    b"vp09": "VP9",
    b"vp08": "VP8",
    b"mp4v": "MPEG-4 Part 2",
    b"jpeg": "Motion JPEG",
    b"mjpa": "Motion JPEG",
    b"apcn": "Apple ProRes",
    b"apch": "Apple ProRes",
    b"encv": "encrypted video",
}
# Profiles openh264 decodes: Constrained Baseline/Baseline, Main, High (progressive 4:2:0 8-bit).
PROFILES = {66: "Baseline", 77: "Main", 100: "High"}
OTHER_PROFILES = {88: "Extended", 110: "High 10", 122: "High 4:2:2", 244: "High 4:4:4", 44: "CAVLC"}


class Mp4Error(SourceError):
    """The file is damaged or lies about itself (its message says where)."""


class NotH264File(SourceError):
    """A sound file this reader does not decode (another codec, fragmented, not ISO BMFF)."""


def _u32(buf: bytes, pos: int) -> int:
    return int(struct.unpack_from(">I", buf, pos)[0])


class Mp4H264Track:
    """The first video track of an MP4/MOV file, H.264, sample by sample (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise SourceError(f"{path}: cannot open: {exc.strerror}") from None
        try:
            self._size = os.fstat(self._fd).st_size
            moov = self._find_moov()
            self._parse_moov(moov)
        except BaseException:
            self.close()
            raise

    def _err(self, what: str) -> Mp4Error:
        return Mp4Error(f"{self.name}: {what}")

    def _pread(self, size: int, offset: int, what: str) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise self._err(f"cannot read {what} at byte {offset}: {exc.strerror}") from None
        if len(data) != size:
            raise self._err(f"{what} at byte {offset} is cut short (truncated file?)")
        return data

    def _find_moov(self) -> bytes:
        """Walk the top-level boxes; the ``moov`` box's payload (wherever it is)."""
        pos, count, moov = 0, 0, None
        while pos < self._size and moov is None:
            count += 1
            if count > MAX_TOP_BOXES:
                raise self._err(f"more than {MAX_TOP_BOXES} top-level boxes and no moov box")
            left = self._size - pos
            head = self._pread(min(16, left), pos, "a box header")
            if count == 1 and head[4:8] not in TOP_LEVEL:
                raise NotH264File(
                    f"{self.name}: not an MP4/MOV (ISO BMFF) file (it starts with {head[:8]!r})"
                )
            kind, start, size = self._header(head, 0, left, f"at byte {pos}")
            if kind == b"moof":
                raise NotH264File(f"{self.name}: a fragmented MP4 (moof boxes)")
            if kind == b"moov":
                if size - start > MAX_MOOV:
                    raise self._err(f"a moov box of {size} bytes (more than {MAX_MOOV} allowed)")
                moov = self._pread(size - start, pos + start, "the moov box")
            pos += size
        if moov is None:
            raise self._err("no moov box (a recording that was never finished, or not an MP4)")
        return moov

    def _header(self, buf: bytes, pos: int, left: int, where: str) -> tuple[bytes, int, int]:
        """(type, header size, box size) of the box at ``buf[pos:]``, ``left`` bytes to its
        parent's (or the file's) end; a size that lies is an Mp4Error."""
        if left < 8:
            raise self._err(f"a box header {where} is cut short (truncated or damaged)")
        size, kind = struct.unpack_from(">I4s", buf, pos)
        head = 8
        if size == 1:  # a 64-bit size follows
            if left < 16:
                raise self._err(f"the 64-bit size of box {kind!r} {where} is cut short")
            size, head = struct.unpack_from(">Q", buf, pos + 8)[0], 16
        elif size == 0:  # "to the end of the file" (or of its parent)
            size = left
        if size < head or size > left:
            raise self._err(
                f"box {kind!r} {where} claims {size} bytes; {left} are left: truncated or damaged"
            )
        return kind, head, size

    def _boxes(
        self, buf: bytes, start: int, end: int, where: str
    ) -> Iterator[tuple[bytes, int, int]]:
        """(type, payload start, payload end) of each box in ``buf[start:end]``."""
        pos = start
        while pos < end:
            kind, head, size = self._header(buf, pos, end - pos, f"in {where}")
            yield kind, pos + head, pos + size
            pos += size

    def _child(self, buf: bytes, span: tuple[int, int], kind: bytes, where: str) -> tuple[int, int]:
        for k, s, e in self._boxes(buf, span[0], span[1], where):
            if k == kind:
                return s, e
        raise self._err(f"no {kind.decode('latin-1')} box in {where}")

    def _parse_moov(self, moov: bytes) -> None:
        video = None
        for kind, s, e in self._boxes(moov, 0, len(moov), "moov"):
            if kind == b"mvex":
                raise NotH264File(f"{self.name}: a fragmented MP4 (mvex box)")
            if kind == b"trak" and video is None:
                mdia = self._child(moov, (s, e), b"mdia", "trak")
                hdlr = self._child(moov, mdia, b"hdlr", "mdia")
                if hdlr[1] - hdlr[0] >= 12 and moov[hdlr[0] + 8 : hdlr[0] + 12] == b"vide":
                    video = mdia
        if video is None:
            raise self._err("no video track")
        self._parse_mdia(moov, video)

    def _parse_mdia(self, buf: bytes, mdia: tuple[int, int]) -> None:
        s, e = self._child(buf, mdia, b"mdhd", "mdia")
        offset = 20 if buf[s] == 1 else 12  # version 1: 64-bit creation/modification times
        if e - s < offset + 4:
            raise self._err("the mdhd box is cut short")
        self.timescale = _u32(buf, s + offset)
        if self.timescale == 0:
            raise self._err("the video track's timescale is 0")
        minf = self._child(buf, mdia, b"minf", "mdia")
        stbl = self._child(buf, minf, b"stbl", "minf")
        tables = {k: (s, e) for k, s, e in self._boxes(buf, stbl[0], stbl[1], "stbl")}
        for need in (b"stsd", b"stts", b"stsc"):
            if need not in tables:
                raise self._err(f"no {need.decode()} box in the video track's sample table")
        self._parse_stsd(buf, tables[b"stsd"])
        sizes = self._sizes(buf, tables)
        self.offsets = self._offsets(buf, tables, sizes)
        self.sizes = sizes
        self.times = self._times(buf, tables, len(sizes))

    def _parse_stsd(self, buf: bytes, span: tuple[int, int]) -> None:
        s, e = span
        if e - s < 8 or _u32(buf, s + 4) < 1:
            raise self._err("the stsd box holds no sample description")
        entry = next(self._boxes(buf, s + 8, e, "stsd"), None)
        if entry is None:
            raise self._err("the stsd box holds no sample description")
        kind, es, ee = entry
        if kind not in (b"avc1", b"avc3"):
            what = CODECS.get(kind, "not H.264")
            raise NotH264File(
                f"{self.name}: the video track is {what} ({kind.decode('latin-1')!r}), not H.264"
            )
        if ee - es < 78:
            raise self._err(f"the {kind.decode()} sample entry is cut short")
        self.codec = kind.decode()
        self.width, self.height = struct.unpack_from(">HH", buf, es + 24)
        avcc = self._child(buf, (es + 78, ee), b"avcC", f"the {self.codec} sample entry")
        self._parse_avcc(buf[avcc[0] : avcc[1]])

    def _parse_avcc(self, rec: bytes) -> None:
        if len(rec) < 7 or rec[0] != 1:
            raise self._err("the avcC record is cut short or of an unknown version")
        self.profile = rec[1]
        if self.profile not in PROFILES:
            name = OTHER_PROFILES.get(self.profile, f"profile_idc {self.profile}")
            raise NotH264File(f"{self.name}: H.264 {name} profile, which openh264 does not decode")
        self.nal_length = (rec[4] & 3) + 1
        if self.nal_length == 3:
            raise self._err("the avcC record gives a NAL length size of 3 bytes (1, 2 or 4 only)")
        sets, pos = [], 5
        for mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count
            if pos >= len(rec):
                raise self._err("the avcC record is cut short")
            count, pos = rec[pos] & mask, pos + 1
            for _ in range(count):
                if pos + 2 > len(rec):
                    raise self._err("the avcC record is cut short")
                size = int.from_bytes(rec[pos : pos + 2], "big")
                if pos + 2 + size > len(rec):
                    raise self._err("a parameter set runs past the end of the avcC record")
                sets.append(START + rec[pos + 2 : pos + 2 + size])
                pos += 2 + size
        self.parameter_sets = b"".join(sets)

    def _table(self, buf: bytes, span: tuple[int, int], name: str, width: int) -> tuple[int, int]:
        """(entry count, offset of the first entry) of a full box table, its size checked."""
        s, e = span
        if e - s < 8:
            raise self._err(f"the {name} box is cut short")
        count = _u32(buf, s + 4)
        if count > MAX_SAMPLES or s + 8 + count * width > e:
            raise self._err(f"the {name} box claims {count} entries and holds fewer")
        return count, s + 8

    def _sizes(self, buf: bytes, tables: dict[bytes, tuple[int, int]]) -> np.ndarray:
        if b"stsz" not in tables:
            raise NotH264File(f"{self.name}: no stsz box (stz2 compact sizes are not read here)")
        s, e = tables[b"stsz"]
        if e - s < 12:
            raise self._err("the stsz box is cut short")
        fixed, count = _u32(buf, s + 4), _u32(buf, s + 8)
        if count == 0:
            raise self._err("the video track has no samples")
        if count > MAX_SAMPLES:
            raise self._err(f"{count} samples (more than {MAX_SAMPLES} allowed)")
        if fixed:
            sizes = np.full(count, fixed, np.int64)
        else:
            if s + 12 + 4 * count > e:
                raise self._err(f"the stsz box claims {count} samples and holds fewer")
            sizes = np.frombuffer(buf, ">u4", count, s + 12).astype(np.int64)
        big = np.flatnonzero(sizes > MAX_SAMPLE)
        if len(big):
            raise self._err(
                f"sample {big[0]} claims {sizes[big[0]]} bytes (a frame is at most {MAX_SAMPLE})"
            )
        return sizes

    def _offsets(
        self, buf: bytes, tables: dict[bytes, tuple[int, int]], sizes: np.ndarray
    ) -> np.ndarray:
        """The file offset of every sample, from the chunk offsets and samples per chunk."""
        if b"co64" in tables:
            n, at = self._table(buf, tables[b"co64"], "co64", 8)
            chunks = np.frombuffer(buf, ">u8", n, at)
        elif b"stco" in tables:
            n, at = self._table(buf, tables[b"stco"], "stco", 4)
            chunks = np.frombuffer(buf, ">u4", n, at).astype(np.uint64)
        else:
            raise self._err("no stco or co64 box (chunk offsets)")
        if n == 0:
            raise self._err("the chunk offset table is empty")
        past = np.flatnonzero(chunks >= np.uint64(self._size))
        if len(past):
            raise self._err(
                f"chunk {past[0] + 1} starts at byte {chunks[past[0]]}, past the end of the file "
                f"({self._size} bytes): truncated or damaged"
            )
        m, at = self._table(buf, tables[b"stsc"], "stsc", 12)
        stsc = np.frombuffer(buf, ">u4", 3 * m, at).reshape(m, 3).astype(np.int64)
        firsts, per_chunk = stsc[:, 0], stsc[:, 1]
        if (
            m == 0
            or firsts[0] != 1
            or np.any(np.diff(firsts) <= 0)
            or firsts[-1] > n
            or np.any(per_chunk < 1)
        ):
            raise self._err("the stsc box (samples per chunk) is inconsistent")
        spans = np.diff(np.append(firsts, n + 1))
        counts = np.repeat(per_chunk, spans)
        if int(counts.sum()) != len(sizes):
            raise self._err(
                f"the chunk table holds {int(counts.sum())} samples, the stsz box {len(sizes)}"
            )
        chunk_of = np.repeat(np.arange(n), counts)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        chunk_first = np.cumsum(counts) - counts  # index of each chunk's first sample
        offsets: np.ndarray = (
            chunks.astype(np.int64)[chunk_of] + starts - starts[chunk_first][chunk_of]
        )
        past = np.flatnonzero(offsets + sizes > self._size)
        if len(past):
            raise self._err(
                f"sample {past[0]} ends at byte {offsets[past[0]] + sizes[past[0]]}, past the end "
                f"of the file ({self._size} bytes): truncated or damaged"
            )
        return offsets

    def _times(self, buf: bytes, tables: dict[bytes, tuple[int, int]], count: int) -> np.ndarray:
        """Presentation times (decode times from stts plus ctts offsets), from 0."""
        deltas = self._runs(buf, tables[b"stts"], "stts", count, signed=False)
        dts = np.cumsum(deltas) - deltas
        self.duration = int(deltas.sum())  # in timescale units: a loop starts again after it
        if b"ctts" in tables:  # version 0 is unsigned, but writers put negative values in it too
            dts = dts + self._runs(buf, tables[b"ctts"], "ctts", count, signed=True)
        result: np.ndarray = dts - int(dts.min())
        return result

    def _runs(
        self, buf: bytes, span: tuple[int, int], name: str, count: int, signed: bool
    ) -> np.ndarray:
        """A (sample count, value) run-length table expanded to one value per sample."""
        m, at = self._table(buf, span, name, 8)
        runs = np.frombuffer(buf, ">u4", 2 * m, at).reshape(m, 2)
        total = int(runs[:, 0].astype(np.int64).sum())
        if total != count:
            raise self._err(f"the {name} box covers {total} samples, the stsz box {count}")
        values = runs[:, 1].astype(np.int32 if signed else np.uint32).astype(np.int64)
        expanded: np.ndarray = np.repeat(values, runs[:, 0].astype(np.int64))
        return expanded

    def __len__(self) -> int:
        return len(self.sizes)

    def sample(self, i: int) -> bytes:
        """Sample ``i`` as an Annex B access unit (``00 00 00 01`` before each NAL unit)."""
        offset, size = int(self.offsets[i]), int(self.sizes[i])
        data = self._pread(size, offset, f"sample {i}")
        units, pos, n = [], 0, self.nal_length
        while pos < size:
            if pos + n > size:
                raise self._err(f"sample {i} (byte {offset}) ends inside a NAL length field")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
            if length > size - pos:
                raise self._err(
                    f"sample {i} (byte {offset}): a NAL unit of {length} bytes runs past the "
                    f"sample's end ({size} bytes): damaged"
                )
            if length:
                units.append(START)
                units.append(data[pos : pos + length])
            pos += length
        return b"".join(units)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
