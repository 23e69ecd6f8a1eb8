"""Delta chunks (method ``ekdelta1``): rebuild one slot-image chunk from the base, bounded memory.

A delta payload has one wire chunk per chunk of the **new** slot image. Each wire chunk is
self-contained (so downloads resume per chunk and each rebuilt chunk is verified alone)::

    magic  b"EKD1" (or b"EKD4": diff and extra stored in 4-byte lanes, see below)
    u32    n_ext      reference extents (read from the base slot, concatenated: R)
    u32    n_ctrl     control triples
    u32    zlen       bytes of the compressed frame that follows the extents
    n_ext  x (u64 base_offset, u32 length)
    frame: n_ctrl x (u32 add, u32 copy, i64 seek) | diff bytes | extra bytes, compressed as
           one zstd frame, or one xz stream (told apart by their magic bytes)

The controls are bsdiff's: for each triple, ``add`` output bytes are ``R[pos:pos+add] + diff``
(bytewise, mod 256), then ``copy`` bytes come verbatim from ``extra``, then ``pos += add +
seek``. A chunk that is only identical 4 KiB blocks of the base is one control with an all-zero
diff. R is never held whole: each ``add`` span is read from the base straight into the output
buffer, then the diff is added in place. Memory while applying: the wire chunk + the decompressed
controls/diff/extra (<= 2 x chunk + controls) + the output chunk: O(chunk), whatever the size
of R (<= ``MAX_REFERENCE``) or of the image.

Why lanes and xz: the diff of a fine-tuned float32 model is noise in the low mantissa bytes
with a 4-byte period. Stored in 4-byte lanes (``EKD4``), zstd -19 packs it ~17% smaller and
still decodes at zstd speed; that gap was what kept bsdiff4 (bzip2) ahead. xz (LZMA2, ``lp=2,
pb=2``) is about as small but decodes ~40x slower, so the encoder keeps it only where it is
clearly smaller still; its dictionary is the body's own size and the decoder runs under a hard
``memlimit``, so apply memory stays O(chunk).

Everything here is checked against the signed ``base.size`` and the chunk's length before it is
used; the rebuilt chunk is then checked against its signed digest by the reader, before any
write (FORMAT.md, ARCHITECTURE Decisions 8 and 14).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.bundle.errors import BundleError, PolicyError

METHOD = "ekdelta1"
MAGIC = b"EKD1"
MAGIC_SHUFFLED = b"EKD4"  # the diff and extra sections are stored byte-shuffled in 4-byte lanes
BLOCK = 4096
MAX_REFERENCE = 16 << 20  # bytes of base one chunk may refer to (read piecewise: not in memory)
_HEAD = struct.Struct("<4sIII")
_EXT = struct.Struct("<QI")
_CTRL = struct.Struct("<IIq")
READ_BLOCK = 1 << 20
XZ_MAGIC = b"\xfd7zXZ\x00"
XZ_MIN_FRAME = 4096  # smaller zstd frames are left alone: nothing worth a slower decode
XZ_KEEP = 0.97  # keep xz only if at most this fraction of the zstd frame
XZ_MEM_SLACK = 4 << 20  # decoder memory beyond the dictionary (<= the body limit)


class DeltaError(BundleError):
    """A delta chunk is malformed (its structure, not just its digest, is wrong)."""


class DeltaBaseError(PolicyError):
    """The base slot is not the image the delta was made from (checked before any write)."""


class MissingBaseError(BundleError):
    """A delta payload was streamed without access to the active slot it applies to."""


def chunk_bound(chunk_size: int) -> int:
    """Largest wire size of one delta chunk for ``chunk_size``: header, extents, a zstd frame."""
    from appliance.bundle.manifest import zstd_bound

    max_ctrl = chunk_size // 8 + 1
    return _HEAD.size + 4096 * _EXT.size + zstd_bound(2 * chunk_size + max_ctrl * _CTRL.size)


@dataclass(frozen=True)
class Extent:
    """A range of the base slot image."""

    offset: int
    length: int


def encode_chunk(extents: list[Extent], controls: list[tuple[int, int, int]], diff: bytes,
                 extra: bytes, level: int = 19, xz: bool | None = None) -> bytes:  # fmt: skip
    """Serialize one delta chunk (the encoder's last step).

    ``xz``: also try an xz stream and keep it if it is clearly smaller (default: at level >= 19,
    i.e. for real bundles; the encoder's size probes at low levels skip it).
    """
    import zstandard

    ctrl = b"".join(_CTRL.pack(*c) for c in controls)
    body = ctrl + diff + extra
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    frame = cctx.compress(body)
    magic = MAGIC
    if (level >= 19 if xz is None else xz) and len(frame) > XZ_MIN_FRAME:
        # 4-byte lanes: float32 weights' exponent bytes barely change, their low bytes are
        # noise; split apart, zstd packs each lane on its own terms (and decodes at zstd speed).
        lanes = cctx.compress(ctrl + shuffle4(diff) + shuffle4(extra))
        if len(lanes) < len(frame):
            frame, magic = lanes, MAGIC_SHUFFLED
        alt = xz_compress(body)
        if len(alt) < XZ_KEEP * len(frame):
            frame, magic = alt, MAGIC
    head = _HEAD.pack(magic, len(extents), len(controls), len(frame))
    return head + b"".join(_EXT.pack(e.offset, e.length) for e in extents) + frame


@dataclass(frozen=True)
class ParsedChunk:
    """A structurally valid delta chunk."""

    extents: list[Extent]
    controls: list[tuple[int, int, int]]
    body: bytes  # controls | diff | extra
    diff_start: int
    extra_start: int


def parse_chunk(wire: bytes, out_len: int, base_size: int, where: str) -> ParsedChunk:
    """Check a delta chunk's structure against the chunk length and the signed base size."""
    if len(wire) < _HEAD.size:
        raise DeltaError(f"{where}: {len(wire)} bytes, shorter than the delta chunk header")
    magic, n_ext, n_ctrl, zlen = _HEAD.unpack_from(wire, 0)
    if magic not in (MAGIC, MAGIC_SHUFFLED):
        raise DeltaError(f"{where}: magic {magic!r} is not {MAGIC!r} (method {METHOD})")
    ext_end = _HEAD.size + n_ext * _EXT.size
    if n_ext > 4096 or ext_end + zlen != len(wire):
        raise DeltaError(f"{where}: header sizes ({n_ext} extents, frame {zlen}) do not add up")
    extents: list[Extent] = []
    ref_total = 0
    for i in range(n_ext):
        off, length = _EXT.unpack_from(wire, _HEAD.size + i * _EXT.size)
        if length == 0 or off + length > base_size:
            raise DeltaError(f"{where}: extent {i} ({off}+{length}) outside the base ({base_size})")
        ref_total += length
        extents.append(Extent(off, length))
    if ref_total > MAX_REFERENCE:
        raise DeltaError(f"{where}: reference of {ref_total} bytes exceeds {MAX_REFERENCE}")
    if n_ctrl > out_len + 1:
        raise DeltaError(f"{where}: {n_ctrl} controls for {out_len} output bytes")
    body = _decompress(memoryview(wire)[ext_end:], 2 * out_len + n_ctrl * _CTRL.size, where)
    diff_start = n_ctrl * _CTRL.size
    if len(body) < diff_start:
        raise DeltaError(f"{where}: control block truncated")
    controls = [_CTRL.unpack_from(body, i * _CTRL.size) for i in range(n_ctrl)]
    adds = sum(c[0] for c in controls)
    copies = sum(c[1] for c in controls)
    if adds + copies != out_len or diff_start + adds + copies != len(body):
        raise DeltaError(
            f"{where}: controls produce {adds + copies} bytes from a {len(body)}-byte body; "
            f"the chunk has {out_len}"
        )
    extra_start = diff_start + adds
    if magic == MAGIC_SHUFFLED:
        body = (body[:diff_start] + unshuffle4(body[diff_start:extra_start])
                + unshuffle4(body[extra_start:]))  # fmt: skip
    return ParsedChunk(extents, controls, body, diff_start, extra_start)


def shuffle4(data: bytes) -> bytes:
    """Bytes 0, 4, 8, ... then 1, 5, 9, ... then 2, ... then 3, ...; a tail of < 4 stays last."""
    import numpy as np

    q = len(data) // 4
    lanes = np.frombuffer(data, dtype=np.uint8, count=4 * q).reshape(q, 4).T
    return lanes.tobytes() + data[4 * q :]


def unshuffle4(data: bytes) -> bytes:
    """The inverse of :func:`shuffle4`."""
    import numpy as np

    q = len(data) // 4
    lanes = np.frombuffer(data, dtype=np.uint8, count=4 * q).reshape(4, q).T
    return lanes.tobytes() + data[4 * q :]


def xz_compress(body: bytes) -> bytes:
    """One xz stream of ``body``: LZMA2, 4-byte-aligned contexts, a dictionary of body size."""
    import lzma

    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 2,
             "pb": 2, "dict_size": max(1 << 16, len(body))}  # fmt: skip
    return lzma.compress(body, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, filters=[lzma2])


def _decompress(frame: bytes | memoryview, limit: int, where: str) -> bytes:
    if bytes(frame[: len(XZ_MAGIC)]) == XZ_MAGIC:
        return _xz_decompress(frame, limit, where)
    return _zstd_decompress(frame, limit, where)


def _xz_decompress(frame: bytes | memoryview, limit: int, where: str) -> bytes:
    """Decode one xz stream of at most ``limit`` bytes, with nothing after it."""
    import lzma

    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=limit + XZ_MEM_SLACK)
    try:
        out = dec.decompress(frame, max_length=limit + 1)
    except lzma.LZMAError as exc:
        raise DeltaError(f"{where}: xz stream does not decompress: {exc}") from None
    if len(out) > limit or not dec.eof:
        raise DeltaError(f"{where}: xz stream is truncated or holds more than {limit} bytes")
    if dec.unused_data:
        raise DeltaError(f"{where}: {len(dec.unused_data)} bytes follow the xz stream")
    return out


def _zstd_decompress(frame: bytes | memoryview, limit: int, where: str) -> bytes:
    import zstandard

    try:
        declared = zstandard.frame_content_size(frame)
        if declared < 0 or declared > limit:
            raise DeltaError(f"{where}: zstd frame declares {declared} bytes (limit {limit})")
        out: Any = zstandard.ZstdDecompressor().decompress(frame, max_output_size=declared)
    except zstandard.ZstdError as exc:
        raise DeltaError(f"{where}: zstd frame does not decompress: {exc}") from None
    if len(out) != declared:
        raise DeltaError(f"{where}: zstd frame holds {len(out)} bytes, declares {declared}")
    return bytes(out)


ReadAt = Callable[[int, memoryview], None]
"""Fill the view with base bytes starting at the given base offset (raise if the base ends)."""


def pread_into(fd: int, view: memoryview, offset: int, where: str) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; pread may return less than asked (loop)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:  # 0 means the base ends early
            raise DeltaBaseError(f"{where}: base ends before byte {offset + len(view)}")
        done += got


class _Reference:
    """The chunk's reference R (its extents, concatenated) read piecewise, never held whole.

    ``fill(pos, view)`` copies ``R[pos:pos+len(view)]`` straight from the base into the output
    buffer, so apply memory does not depend on R's size (up to ``MAX_REFERENCE``).
    """

    def __init__(self, extents: list[Extent], read_at: ReadAt) -> None:
        self.extents = extents
        self.starts: list[int] = []
        total = 0
        for e in extents:
            self.starts.append(total)
            total += e.length
        self.length = total
        self.read_at = read_at

    def fill(self, pos: int, view: memoryview) -> None:
        k = bisect.bisect_right(self.starts, pos) - 1
        done = 0
        while done < len(view):
            ext = self.extents[k]
            inside = pos + done - self.starts[k]
            take = min(ext.length - inside, len(view) - done)
            self.read_at(ext.offset + inside, view[done : done + take])
            done += take
            k += 1


def apply_parsed(parsed: ParsedChunk, read_at: ReadAt, out_len: int, where: str) -> bytes:
    """Run the controls, reading each ``add`` span of R from the base into the output.

    The output buffer receives the reference bytes first, then numpy adds the diff bytes in
    place: memory is the output chunk + the decompressed body, whatever R's size.
    """
    import numpy as np

    ref = _Reference(parsed.extents, read_at)
    out = bytearray(out_len)
    view = memoryview(out)
    outa = np.frombuffer(out, dtype=np.uint8)
    body = np.frombuffer(parsed.body, dtype=np.uint8)
    extra = memoryview(parsed.body)
    pos, o, d, x = 0, 0, parsed.diff_start, parsed.extra_start
    for add, copy, seek in parsed.controls:
        if add:
            if pos < 0 or pos + add > ref.length:
                raise DeltaError(
                    f"{where}: control reads reference bytes {pos}+{add} of {ref.length}"
                )
            ref.fill(pos, view[o : o + add])
            span = outa[o : o + add]
            np.add(span, body[d : d + add], out=span)
            d += add
            o += add
        if copy:
            view[o : o + copy] = extra[x : x + copy]
            x += copy
            o += copy
        pos += add + seek
    return bytes(out)


class BaseSlot:
    """Read access to the base (active) slot image a delta applies to."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._checked: tuple[int, str] | None = None

    def check(self, size: int, sha256: str) -> None:
        """Raise :class:`DeltaBaseError` unless the first ``size`` bytes hash to ``sha256``.

        Hashed once per open slot (the installer checks before marking the target bad, the
        reader again before streaming); the slot is mounted read-only meanwhile.
        """
        if self._checked == (size, sha256):
            return
        digest = hashlib.sha256()
        buf = memoryview(bytearray(READ_BLOCK))  # one buffer, reused: no allocation per block
        offset = 0
        while offset < size:
            got = os.preadv(self._fd, [buf[: min(READ_BLOCK, size - offset)]], offset)
            if got <= 0:
                break
            digest.update(buf[:got])
            offset += got
        if offset != size or digest.hexdigest() != sha256:
            raise DeltaBaseError(
                f"delta applies to a base image of {size} bytes with sha256 {sha256[:16]}..., "
                f"but {self.path} holds {offset} bytes with sha256 {digest.hexdigest()[:16]}...: "
                "this device runs another version; install the full bundle instead"
            )
        self._checked = (size, sha256)

    def rebuild(self, wire: bytes, out_len: int, base_size: int, where: str) -> bytes:
        """One image chunk from one delta chunk (structure checked; digest is the caller's)."""
        parsed = parse_chunk(wire, out_len, base_size, where)
        fd = self._fd
        return apply_parsed(
            parsed, lambda off, view: pread_into(fd, view, off, where), out_len, where
        )

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BaseSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
