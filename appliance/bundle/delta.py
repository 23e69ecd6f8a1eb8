"""Delta chunks (method ``ekdelta2``): rebuild one slot-image chunk from the base, bounded memory.

A delta payload has one wire chunk per chunk of the **new** slot image. Each wire chunk is
self-contained (so downloads resume per chunk and each rebuilt chunk is verified alone)::

    magic  b"EKD1" (or b"EKD4": diff and extra stored in 4-byte lanes, see below;
           or b"EKD0": the chunk is R as it is, n_ctrl = 0, see below)
    u32    n_ext      reference extents (read from the base slot, concatenated: R)
    u32    n_ctrl     control triples
    u32    zlen       bytes of the compressed frame that follows the extents
    n_ext  x (u64 base_offset, u32 length)
    frame: n_ctrl x (u32 add, u32 copy, i64 seek) | diff bytes | extra bytes, compressed as
           one zstd frame, or one xz stream (told apart by their magic bytes)

``ekdelta2`` is ``ekdelta1`` plus the ``EKD0`` form: most chunks of an update are unchanged
blocks of the base, and as one control with an all-zero diff each cost a ~56-byte zstd frame
(84 bytes with its header and extent). ``EKD0`` is the header and the extent table only: raw
(``zlen`` = 0; 16 + 12 bytes for one extent) or as one zstd frame of ``zlen`` bytes declaring
exactly 12 x ``n_ext`` bytes (files that moved by different amounts make tables of ~100
extents per chunk: 303 KB raw, 6.3 KB packed on a package-install pair). Devices read both
methods; the writer makes ``ekdelta2`` (a device that knows only ``ekdelta1`` refuses it from
the manifest, before anything is written).

The controls are bsdiff's: for each triple, ``add`` output bytes are ``R[pos:pos+add] + diff``
(bytewise, mod 256), then ``copy`` bytes come verbatim from ``extra``, then ``pos += add +
seek``. A chunk that is only identical 4 KiB blocks of the base is one control with an all-zero
diff. The device side (parse, rebuild from the base slot) is :mod:`appliance.bundle.delta_apply`:
R is never held whole there, memory is O(chunk) whatever the size of R (<= ``MAX_REFERENCE``)
or of the image. This module is the format, shared with the build host's encoder.

Why lanes and xz: the diff of a fine-tuned float32 model is noise in the low mantissa bytes
with a 4-byte period. Stored in 4-byte lanes (``EKD4``), zstd -19 packs it ~17% smaller and
still decodes at zstd speed; that gap was what kept bsdiff4 (bzip2) ahead. xz (LZMA2, ``lp=2,
pb=2``) is about as small but decodes ~40x slower, so the encoder keeps it only where it is
clearly smaller still; its dictionary is the body's own size and the decoder runs under a hard
``memlimit``, so apply memory stays O(chunk).

Everything here is checked against the signed ``base.size`` and the chunk's length before it is
used; the rebuilt chunk is then checked against its signed digest by the reader, before any
write (FORMAT.md, docs/decisions.md §8 and §14).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from appliance.bundle.errors import BundleError, PolicyError

METHOD = "ekdelta2"  # what the writer makes
METHODS = ("ekdelta1", "ekdelta2")  # what a device reads (ekdelta1: no EKD0 chunks)
MAGIC = b"EKD1"
MAGIC_RUN = b"EKD0"  # R as it is: no controls, no frame
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
# At most one control per CONTROL_BYTES output bytes, plus one. The encoder keeps to it (a
# chunk whose bsdiff controls would exceed it is encoded without bsdiff: at most two controls
# per 4 KiB block) and the device refuses more before decompressing anything: with the old
# bound (one per output byte) an 8.7 KB signed chunk decoded to 16.7 M controls (+1.4 GiB).
CONTROL_BYTES = 64


class DeltaError(BundleError):
    """A delta chunk is malformed (its structure, not just its digest, is wrong)."""


class DeltaBaseError(PolicyError):
    """The base slot is not the image the delta was made from (checked before any write)."""


class MissingBaseError(BundleError):
    """A delta payload was streamed without access to the active slot it applies to."""


def max_controls(out_len: int) -> int:
    """The most controls a chunk rebuilding ``out_len`` bytes may carry (encoder and device)."""
    return out_len // CONTROL_BYTES + 1


def chunk_bound(chunk_size: int) -> int:
    """Largest wire size of one delta chunk for ``chunk_size``: header, extents, a zstd frame."""
    from appliance.bundle.manifest import zstd_bound

    max_ctrl = max_controls(chunk_size)
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

    if extents and _is_run(extents, controls, diff, extra):
        table = b"".join(_EXT.pack(e.offset, e.length) for e in extents)
        packed = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(table)
        if len(packed) < len(table):  # runs of moved files: tables of ~100 extents pack ~50x
            return _HEAD.pack(MAGIC_RUN, len(extents), 0, len(packed)) + packed
        return _HEAD.pack(MAGIC_RUN, len(extents), 0, 0) + table
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


def _is_run(extents: list[Extent], controls: list[tuple[int, int, int]], diff: bytes,
            extra: bytes) -> bool:  # fmt: skip
    """True if the controls output R unchanged, front to back (an ``EKD0`` chunk)."""
    if extra or not controls or any(copy or seek or not add for add, copy, seek in controls):
        return False
    return len(diff) == sum(e.length for e in extents) and diff.count(0) == len(diff)


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


_APPLY_NAMES = {"BaseSlot", "ParsedChunk", "apply_parsed", "parse_chunk", "pread_into"}


def __getattr__(name: str) -> Any:
    """The device side moved to :mod:`appliance.bundle.delta_apply`; old imports still work."""
    if name in _APPLY_NAMES:
        from appliance.bundle import delta_apply

        return getattr(delta_apply, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
