"""Apply delta chunks (ekdelta1, ekdelta2; format in :mod:`appliance.bundle.delta`) on a device.

Each wire chunk is parsed and checked against the chunk length and the signed base size, then
rebuilt from the base (active) slot in bounded memory: the output chunk, its decompressed body
and one read group, whatever the size of the chunk's reference R or of the image. The reader
verifies the rebuilt chunk against its signed digest before any write (FORMAT.md, docs/decisions.md
§8 and §14). Where the time goes and why it is built this way: FORMAT.md, "Apply".
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.bundle.delta import (
    _CTRL,
    _EXT,
    _HEAD,
    CONTROL_BYTES,
    MAGIC,
    MAGIC_RUN,
    MAGIC_SHUFFLED,
    MAX_REFERENCE,
    METHOD,
    XZ_MAGIC,
    XZ_MEM_SLACK,
    DeltaBaseError,
    DeltaError,
    Extent,
    max_controls,
)
from appliance.bundle.delta_add import add_diff, all_zero, unshuffled
from appliance.bundle.delta_check import CHECK_BLOCK, BackgroundCheck, hash_base


@dataclass(frozen=True)
class ParsedChunk:
    """A structurally valid delta chunk."""

    extents: list[Extent]
    controls: list[tuple[int, int, int]]
    body: bytes | bytearray  # controls | diff | extra
    diff_start: int
    extra_start: int
    zero_diff: bool = False  # the diff is all zero bytes: R is copied unchanged


# Small frames seen before -> their checked body. Unchanged stretches of the image are all the
# same chunk (R as it is: one control, an all-zero diff), so their frames repeat byte for byte;
# a frame's bytes decide what it decompresses to, so that body is decompressed and scanned once,
# not once per chunk. Bounded: one entry of about one chunk.
_KNOWN: dict[tuple[bytes, int, int, bytes], tuple[bytes | bytearray, bool]] = {}
_KNOWN_FRAME = 256
_KNOWN_ENTRIES = 1


def parse_chunk(wire: bytes, out_len: int, base_size: int, where: str) -> ParsedChunk:
    """Check a delta chunk's structure against the chunk length and the signed base size."""
    if len(wire) < _HEAD.size:
        raise DeltaError(f"{where}: {len(wire)} bytes, shorter than the delta chunk header")
    magic, n_ext, n_ctrl, zlen = _HEAD.unpack_from(wire, 0)
    if magic == MAGIC_RUN:
        return _parse_run(wire, n_ext, n_ctrl, zlen, out_len, base_size, where)
    if magic not in (MAGIC, MAGIC_SHUFFLED):
        raise DeltaError(f"{where}: magic {magic!r} is not {MAGIC!r} (method {METHOD})")
    ext_end = _HEAD.size + n_ext * _EXT.size
    if n_ext > 4096 or ext_end + zlen != len(wire):
        raise DeltaError(f"{where}: header sizes ({n_ext} extents, frame {zlen}) do not add up")
    extents = _parse_extents(memoryview(wire)[_HEAD.size : ext_end], base_size, where)
    if n_ctrl > max_controls(out_len):
        raise DeltaError(
            f"{where}: {n_ctrl} controls for {out_len} output bytes; the format allows at most "
            f"{max_controls(out_len)} (one per {CONTROL_BYTES} bytes): refused before decoding"
        )
    frame = memoryview(wire)[ext_end:]
    key = (magic, n_ctrl, out_len, bytes(frame)) if zlen <= _KNOWN_FRAME else None
    known = _KNOWN.get(key) if key is not None else None
    body = (
        known[0]
        if known is not None
        else _decompress(frame, 2 * out_len + n_ctrl * _CTRL.size, where)
    )
    diff_start = n_ctrl * _CTRL.size
    if len(body) < diff_start:
        raise DeltaError(f"{where}: control block truncated")
    controls: list[tuple[int, int, int]] = list(_CTRL.iter_unpack(memoryview(body)[:diff_start]))
    adds = sum(c[0] for c in controls)
    copies = sum(c[1] for c in controls)
    if adds + copies != out_len or diff_start + adds + copies != len(body):
        raise DeltaError(
            f"{where}: controls produce {adds + copies} bytes from a {len(body)}-byte body; "
            f"the chunk has {out_len}"
        )
    extra_start = diff_start + adds
    if known is not None:
        return ParsedChunk(extents, controls, body, diff_start, extra_start, known[1])
    if magic == MAGIC_SHUFFLED:
        body = unshuffled(body, diff_start, extra_start)
    zero_diff = False
    if key is not None and len(body) <= out_len + 4096:  # worth remembering: R as it is
        zero_diff = all_zero(body, diff_start, extra_start)
        if len(_KNOWN) >= _KNOWN_ENTRIES:
            _KNOWN.clear()
        _KNOWN[key] = (bytes(body), zero_diff)
    return ParsedChunk(extents, controls, body, diff_start, extra_start, zero_diff)


def _parse_run(
    wire: bytes, n_ext: int, n_ctrl: int, zlen: int, out_len: int, base_size: int, where: str
) -> ParsedChunk:
    """An ``EKD0`` chunk: the output is R as it is (an extent table, raw or one zstd frame)."""
    size = n_ext * _EXT.size
    if n_ext == 0 or n_ext > 4096 or n_ctrl or _HEAD.size + (zlen or size) != len(wire):
        raise DeltaError(
            f"{where}: an EKD0 chunk is a header and 1..4096 extents (raw or one zstd frame), "
            "nothing else"
        )
    table = memoryview(wire)[_HEAD.size :]
    if zlen:
        table = memoryview(_zstd_decompress(table, size, where))
        if len(table) != size:
            raise DeltaError(
                f"{where}: EKD0 frame holds {len(table)} bytes, {n_ext} extents are {size}"
            )
    extents = _parse_extents(table, base_size, where)
    total = sum(e.length for e in extents)
    if total != out_len:
        raise DeltaError(f"{where}: the extents of an EKD0 chunk produce {total} bytes; "
                         f"the chunk has {out_len}")  # fmt: skip
    return ParsedChunk(extents, [(out_len, 0, 0)], b"", 0, out_len, zero_diff=True)


def _parse_extents(table: memoryview, base_size: int, where: str) -> list[Extent]:
    extents: list[Extent] = []
    ref_total = 0
    for i, (off, length) in enumerate(_EXT.iter_unpack(table)):
        if length == 0 or off + length > base_size:
            raise DeltaError(f"{where}: extent {i} ({off}+{length}) outside the base ({base_size})")
        ref_total += length
        extents.append(Extent(off, length))
    if ref_total > MAX_REFERENCE:
        raise DeltaError(f"{where}: reference of {ref_total} bytes exceeds {MAX_REFERENCE}")
    return extents


def _decompress(frame: bytes | memoryview, limit: int, where: str) -> bytes:
    if bytes(frame[: len(XZ_MAGIC)]) == XZ_MAGIC:
        return _xz_decompress(frame, limit, where)
    return _zstd_decompress(frame, limit, where)


_XZ_ONE_AT_A_TIME = threading.Lock()


def _xz_decompress(frame: bytes | memoryview, limit: int, where: str) -> bytes:
    """Decode one xz stream of at most ``limit`` bytes, with nothing after it."""
    import lzma

    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=limit + XZ_MEM_SLACK)
    try:
        with _XZ_ONE_AT_A_TIME:  # its dictionary is as large as the body: one at a time
            out = dec.decompress(frame, max_length=limit + 1)
    except lzma.LZMAError as exc:
        raise DeltaError(f"{where}: xz stream does not decompress: {exc}") from None
    if len(out) > limit or not dec.eof:
        raise DeltaError(f"{where}: xz stream is truncated or holds more than {limit} bytes")
    if dec.unused_data:
        raise DeltaError(f"{where}: {len(dec.unused_data)} bytes follow the xz stream")
    return out


_local = threading.local()  # one zstd decompression context per thread (not thread-safe)


def _zstd_decompress(frame: bytes | memoryview, limit: int, where: str) -> bytes:
    import zstandard

    dctx = getattr(_local, "dctx", None)
    if dctx is None:  # reused: a fresh context per chunk costs an allocation each time
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    try:
        declared = zstandard.frame_content_size(frame)
        if declared < 0 or declared > limit:
            raise DeltaError(f"{where}: zstd frame declares {declared} bytes (limit {limit})")
        out: Any = dctx.decompress(frame, max_output_size=declared)
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


Span = tuple[int, int, int]  # (position in R, position in the gathered buffer, length)


class _Reference:
    """The chunk's reference R (its extents, concatenated), read piecewise, never held whole.

    :meth:`gather` copies the ``add`` spans of R into one buffer. Spans are read in R order
    and nearby ones (gaps up to ``GAP``) are merged into one read of at most ``GROUP`` bytes, so
    a chunk of hundreds of short bsdiff controls costs a few reads, not hundreds. Memory: one
    group buffer, whatever R's size (up to ``MAX_REFERENCE``).
    """

    GAP = 8 << 10
    GROUP = 256 << 10

    def __init__(self, extents: list[Extent], read_at: ReadAt) -> None:
        self.extents = extents
        self.starts: list[int] = []
        total = 0
        for e in extents:
            self.starts.append(total)
            total += e.length
        self.length = total
        self.read_at = read_at

    def gather(self, spans: list[Span], into: memoryview) -> None:
        """``into[o:o+n] = R[pos:pos+n]`` for every span (positions already checked)."""
        if len(spans) > 2:
            spans = sorted(spans)
        group: memoryview | None = None
        i = 0
        while i < len(spans):
            start, o, n = spans[i]
            end, j = start + n, i + 1
            while j < len(spans) and spans[j][0] <= end + self.GAP:
                grown = max(end, spans[j][0] + spans[j][2])
                if grown - start > self.GROUP:
                    break
                end, j = grown, j + 1
            if j == i + 1:  # alone: straight into place
                self.read(start, into[o : o + n])
            else:
                if group is None:
                    group = memoryview(bytearray(self.GROUP))
                self.read(start, group[: end - start])
                for pos, o, n in spans[i:j]:
                    into[o : o + n] = group[pos - start : pos - start + n]
            i = j

    def read(self, pos: int, view: memoryview) -> None:
        """Fill ``view`` with ``R[pos:pos+len(view)]`` (crossing extents as needed)."""
        k = bisect.bisect_right(self.starts, pos) - 1
        done = 0
        while done < len(view):
            ext = self.extents[k]
            inside = pos + done - self.starts[k]
            take = min(ext.length - inside, len(view) - done)
            self.read_at(ext.offset + inside, view[done : done + take])
            done += take
            k += 1


def apply_parsed(parsed: ParsedChunk, read_at: ReadAt, out_len: int, where: str) -> bytearray:
    """Run the controls: ``add`` spans of R plus the diff, then ``copy`` runs of extra.

    The ``add`` spans of R are gathered to the front of the output (:meth:`_Reference.gather`),
    the diff is added to them (:func:`add_diff`: its non-zero stretches only, no numpy), then,
    back to front, each span moves to its place and the ``extra`` runs fill the gaps (every
    move goes right, so nothing is overwritten before it moved). An all-zero diff is not added
    at all. Memory: the output chunk, one read group and the decompressed body, whatever R's
    size; Python does a couple of slice copies per control, the byte work (reads, the add, the
    moves) runs in C.
    """
    ref = _Reference(parsed.extents, read_at)
    controls = parsed.controls
    body = memoryview(parsed.body)
    d, x = parsed.diff_start, parsed.extra_start
    adds = x - d
    spans: list[Span] = []
    pos = o = 0
    limit = ref.length
    for add, _copy, seek in controls:
        if add:
            if pos < 0 or pos + add > limit:
                raise DeltaError(f"{where}: control reads reference bytes {pos}+{add} of {limit}")
            spans.append((pos, o, add))
            o += add
        pos += add + seek
    out = bytearray(out_len)
    view = memoryview(out)
    ref.gather(spans, view)
    if adds and not parsed.zero_diff:
        add_diff(view[:adds], parsed.body, d)
    if adds == out_len:
        return out
    o, a, x = out_len, adds, len(body)
    for add, copy, _seek in reversed(controls):
        if copy:
            o -= copy
            x -= copy
            view[o : o + copy] = body[x : x + copy]
        if add:
            o -= add
            a -= add
            if o != a:
                view[o : o + add] = view[a : a + add]  # memmove: may overlap its source
    return out


class BaseSlot:
    """Read access to the base (active) slot image a delta applies to."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._checked: tuple[int, str] | None = None
        self._pending: BackgroundCheck | None = None

    def check(self, size: int, sha256: str) -> None:
        """Raise :class:`DeltaBaseError` unless the first ``size`` bytes hash to ``sha256``.

        Hashed once per open slot (the installer checks before marking the target bad, the
        reader again before streaming); the slot is mounted read-only meanwhile. The next
        blocks are read on a helper thread while this one hashes (both release the GIL): the
        check costs about the sha256 alone, not read + sha256 (FORMAT.md, "Applying"). If
        :meth:`start_check` began it, this waits for that thread's answer.
        """
        if self._checked == (size, sha256):
            return
        pending = self._pending
        if pending is not None and pending.wanted == (size, sha256):
            self._pending = None
            error = pending.result()
        else:
            error = hash_base(self._fd, self.path, size, sha256, CHECK_BLOCK, None)
        if error is not None:
            raise error
        self._checked = (size, sha256)

    def start_check(self, size: int, sha256: str) -> None:
        """Begin :meth:`check` on a helper thread; :meth:`check` later returns or raises its result.

        The apply then rebuilds (and writes) chunks meanwhile: each is verified against its
        own signed digest before it is written, so nothing unverified reaches the target, and
        the caller asks the loader to try the slot only after :meth:`check` returned
        (docs/decisions.md §34). Smaller read blocks than :meth:`check` alone: the two buffers
        are live beside the apply's (peak RSS).
        """
        if self._checked == (size, sha256) or self._pending is not None:
            return
        self._pending = BackgroundCheck(self._fd, self.path, size, sha256)

    def checking(self, size: int, sha256: str) -> bool:
        """True if :meth:`start_check` began this check and no one has waited for it yet."""
        return self._pending is not None and self._pending.wanted == (size, sha256)

    def rebuild(self, wire: bytes, out_len: int, base_size: int, where: str) -> bytes:
        """One image chunk from one delta chunk (structure checked; digest is the caller's).

        Thread-safe (positioned reads, no shared state): the reader rebuilds chunks on its
        verify workers. Returns immutable bytes: sinks may keep what
        they are given (the installer's read-back does) without copying it again.
        """
        parsed = parse_chunk(wire, out_len, base_size, where)
        fd = self._fd
        if (
            parsed.zero_diff
            and parsed.controls == [(out_len, 0, 0)]
            and sum(e.length for e in parsed.extents) >= out_len  # else apply_parsed says why
        ):
            return _read_run(fd, parsed.extents, out_len, where)
        out = apply_parsed(
            parsed, lambda off, view: pread_into(fd, view, off, where), out_len, where
        )
        return bytes(out)

    def close(self) -> None:
        """Stop a check still running, close the descriptor (idempotent)."""
        if self._pending is not None:
            self._pending.cancel()  # its thread reads this descriptor: stopped before close
            self._pending = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BaseSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_run(fd: int, extents: list[Extent], out_len: int, where: str) -> bytes:
    """The first ``out_len`` bytes of R, read extent by extent into bytes objects and joined.

    Unchanged blocks (most of an update) are runs of the base: one extent is read straight
    into the bytes object returned. Several (files that moved by different amounts, ~100 per
    chunk) are read into one bytes object each, mostly small ones from the heap, and joined:
    one chunk-sized allocation, where filling a buffer and copying it to bytes took two (each
    a fresh mapping zero-filled page by page) and the same peak memory.
    """
    parts: list[bytes] = []
    left = out_len
    for e in extents:
        if not left:
            break
        n = min(e.length, left)
        part = os.pread(fd, n, e.offset)
        if len(part) != n:
            raise DeltaBaseError(f"{where}: base ends inside the chunk's reference")
        parts.append(part)
        left -= n
    return parts[0] if len(parts) == 1 else b"".join(parts)  # (none: out_len 0)
