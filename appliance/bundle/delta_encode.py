"""Encode a delta (method ``ekdelta2``) from a base slot image to a new one, chunk by chunk.

Runs on the build host (``kiln bundle --delta-from``); memory is O(base image) here, never on the
device. For each chunk of the new image:

1. every 4 KiB block found byte-identical in the base (a block-hash index of the base; ext4
   stores file data block-aligned, so unchanged files match even when they moved) becomes a
   reference extent;
2. a chunk made only of such blocks is one control with an all-zero diff;
3. otherwise the reference R is the matched blocks' neighbourhoods in the base (windows at the
   shifts of nearby matches, and at the same offset), capped at ``MAX_REFERENCE``, and bsdiff
   (``bsdiff4.core.diff``, suffix sorting) diffs the chunk against R. The diff bytes of moved
   and slightly changed code are mostly zeros, which zstd -19 then compresses.

Every encoded chunk is applied again with the device's own code and compared before it is
accepted, so the encoder can never emit a chunk the device would rebuild differently.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.delta import (
    BLOCK,
    MAX_REFERENCE,
    DeltaError,
    Extent,
    encode_chunk,
    max_controls,
)
from appliance.bundle.delta_apply import apply_parsed, parse_chunk

log = logging.getLogger(__name__)
WINDOW_MARGIN = 256 << 10  # bytes of base on each side of a candidate window
ENCODE_WORKERS = 4  # threads encoding chunks at once (bsdiff: up to ~17 x MAX_REFERENCE each)


def _block_key(block: bytes | memoryview) -> bytes:
    return hashlib.blake2b(block, digest_size=16).digest()


class FileBytes:
    """A read-only image file that slices like ``bytes`` (positioned reads, thread-safe).

    The encoder reads the images through this instead of holding them: a 1 GiB pair held
    whole took 2+ GiB of RSS; read on demand (and left to the page cache), encode memory is
    the block index plus each thread's bsdiff, whatever the images' size.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (lives as long as this object)
        self._size = os.fstat(self._file.fileno()).st_size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, where: slice) -> bytes:
        start, stop, _step = where.indices(self._size)
        if stop <= start:
            return b""
        data = os.pread(self._file.fileno(), stop - start, start)
        if len(data) != stop - start:
            raise DeltaError(f"{self._file.name}: changed while encoding (short read at {start})")
        return data


ImageBytes = bytes | FileBytes


@dataclass
class BaseIndex:
    """The base image (bytes, or read from its file) plus a hash index of its 4 KiB blocks."""

    data: ImageBytes
    blocks: dict[bytes, int]

    @classmethod
    def load(cls, path: Path) -> BaseIndex:
        """Index each whole 4 KiB block of ``path`` (first occurrence wins), 1 MiB per read."""
        blocks: dict[bytes, int] = {}
        i = 0
        with open(path, "rb") as f:
            while piece := f.read(256 * BLOCK):
                view = memoryview(piece)
                for j in range(len(piece) // BLOCK):
                    blocks.setdefault(_block_key(view[j * BLOCK : (j + 1) * BLOCK]), i + j)
                i += len(piece) // BLOCK
        return cls(FileBytes(path), blocks)

    def block(self, i: int) -> bytes:
        """Base block ``i``."""
        return self.data[i * BLOCK : (i + 1) * BLOCK]


def _match_blocks(index: BaseIndex, chunk: ImageBytes, prev: int | None) -> list[int | None]:
    """For each whole block of ``chunk``: the base block it equals (continuing runs), or None."""
    out: list[int | None] = []
    for j in range(len(chunk) // BLOCK):
        block = chunk[j * BLOCK : (j + 1) * BLOCK]
        hit: int | None = None
        if prev is not None and index.block(prev + 1) == block:
            hit = prev + 1  # keep runs contiguous: fewer, longer extents
        else:
            hit = index.blocks.get(_block_key(block))
            if hit is not None and index.block(hit) != block:
                hit = None  # a 128-bit collision: never trust a hash alone
        out.append(hit)
        prev = hit
    out.extend([None] * (1 if len(chunk) % BLOCK else 0))
    return out


def _extents_of(blocks: list[int]) -> list[Extent]:
    """Merge base block numbers into extents (consecutive runs)."""
    extents: list[Extent] = []
    for b in blocks:
        if extents and extents[-1].offset + extents[-1].length == b * BLOCK:
            last = extents[-1]
            extents[-1] = Extent(last.offset, last.length + BLOCK)
        else:
            extents.append(Extent(b * BLOCK, BLOCK))
    return extents


def _windows(start: int, length: int, shifts: list[int], base_size: int) -> list[Extent]:
    """Base windows around ``start`` moved by each shift, merged and capped at MAX_REFERENCE."""
    spans: list[tuple[int, int]] = []
    for s in shifts:
        lo = max(0, (start + s - WINDOW_MARGIN) // BLOCK * BLOCK)
        hi = min(base_size, start + s + length + WINDOW_MARGIN)
        if hi > lo:
            spans.append((lo, hi))
    spans.sort()
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    out: list[Extent] = []
    total = 0
    for lo, hi in merged:
        take = min(hi - lo, MAX_REFERENCE - total)
        if take <= 0:
            break
        out.append(Extent(lo, take))
        total += take
    return out


def _decode_controls(bcontrol: bytes) -> list[tuple[int, int, int]]:
    import bsdiff4.core

    vals = [bsdiff4.core.decode_int64(bcontrol[i : i + 8]) for i in range(0, len(bcontrol), 8)]
    return [(vals[i], vals[i + 1], vals[i + 2]) for i in range(0, len(vals), 3)]


Control = tuple[int, int, int]


class _Builder:
    """Accumulates one chunk: the reference extents R, controls, diff and extra streams."""

    def __init__(self) -> None:
        self.extents: list[Extent] = []
        self.ref_len = 0
        self.pos = 0  # bsdiff's old position in R after the controls so far
        self.controls: list[Control] = []
        self.diff: list[bytes] = []
        self.extra: list[bytes] = []

    def add_ref(self, spans: list[Extent]) -> int:
        """Append base extents to R; return where the first begins in R."""
        at = self.ref_len
        for e in spans:
            last = self.extents[-1] if self.extents else None
            if last is not None and last.offset + last.length == e.offset:
                self.extents[-1] = Extent(last.offset, last.length + e.length)
            else:
                self.extents.append(e)
            self.ref_len += e.length
        return at

    def emit(self, at: int, controls: list[Control], diff: bytes, extra: bytes) -> None:
        """Append controls that expect to start at R position ``at``."""
        if at != self.pos:
            self.controls.append((0, 0, at - self.pos))
            self.pos = at
        for add, copy, seek in controls:
            self.controls.append((add, copy, seek))
            self.pos += add + seek
        self.diff.append(diff)
        self.extra.append(extra)

    def encode(self, level: int) -> bytes:
        return encode_chunk(
            self.extents, self.controls, b"".join(self.diff), b"".join(self.extra), level
        )


def _zsize(controls: list[Control], diff: bytes, extra: bytes) -> int:
    return len(encode_chunk([], controls, diff, extra, 3))


class DeltaEncoder:
    """Encodes each chunk of a new image against one indexed base image."""

    def __init__(
        self, base: BaseIndex, chunk_size: int, level: int = 19, new: ImageBytes | None = None
    ) -> None:
        if chunk_size % BLOCK:
            raise DeltaError(f"delta chunk size {chunk_size} must be a multiple of {BLOCK}")
        self.base = base
        self.chunk_size = chunk_size
        self.level = level
        self._shift_pos: list[int] = []  # new-image offsets of matched blocks, ascending
        self._shift_val: list[int] = []  # their shift (base offset - new offset)
        self._matches: list[int | None] | None = None
        if new is not None:  # a first pass over the whole image: shifts after a chunk too
            self._matches = _match_blocks(base, new, None)
            for j, m in enumerate(self._matches):
                if m is not None:
                    self._shift_pos.append(j * BLOCK)
                    self._shift_val.append((m - j) * BLOCK)
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()  # chunks are encoded on several threads

    def encode(self, index: int, chunk: bytes) -> bytes:
        """The wire bytes of delta chunk ``index`` (verified by applying it again)."""
        start = index * self.chunk_size
        if self._matches is not None:
            first = start // BLOCK
            matches = self._matches[first : first + len(chunk) // BLOCK]
            matches += [None] * (1 if len(chunk) % BLOCK else 0)
        else:
            prev_block = None
            if self._shift_pos and self._shift_pos[-1] == start - BLOCK:
                prev_block = (start - BLOCK + self._shift_val[-1]) // BLOCK
            matches = _match_blocks(self.base, chunk, prev_block)
            for j, m in enumerate(matches):
                if m is not None:
                    self._shift_pos.append(start + j * BLOCK)
                    self._shift_val.append(m * BLOCK - start - j * BLOCK)
        wire = self._encode(start, chunk, matches, bsdiff=True)
        if wire is None:  # bsdiff's controls would pass the format's bound: without it
            with self._stats_lock:
                self.stats["too_many_controls"] += 1
            wire = self._encode(start, chunk, matches, bsdiff=False)
            assert wire is not None  # literal/aligned runs: <= 2 controls per 4 KiB block
        self._verify(wire, chunk, index)
        return wire

    def _encode(
        self, start: int, chunk: bytes, matches: list[int | None], *, bsdiff: bool
    ) -> bytes | None:
        """One chunk's wire bytes; None if its controls would exceed ``max_controls``."""
        builder = _Builder()
        j = 0
        n = len(matches)
        while j < n:
            k = j + 1
            if matches[j] is not None:
                while k < n and matches[k] is not None and matches[k] == matches[k - 1] + 1:  # type: ignore[operator]
                    k += 1
                at = builder.add_ref([Extent(matches[j] * BLOCK, (k - j) * BLOCK)])  # type: ignore[operator]
                builder.emit(at, [((k - j) * BLOCK, 0, 0)], bytes((k - j) * BLOCK), b"")
                with self._stats_lock:
                    self.stats["copy_blocks"] += k - j
            else:
                while k < n and matches[k] is None:
                    k += 1
                lo, hi = j * BLOCK, min(k * BLOCK, len(chunk))
                self._literal(builder, start + lo, chunk[lo:hi], bsdiff)
            j = k
        if len(builder.controls) > max_controls(len(chunk)):
            return None
        return builder.encode(self.level)

    def _shifts_near(self, pos: int, length: int) -> list[int]:
        """Shifts of the nearest matched blocks before and after [pos, pos+length), and 0."""
        shifts: list[int] = []
        k = bisect.bisect_left(self._shift_pos, pos)
        if k > 0:
            shifts.append(self._shift_val[k - 1])
        k = bisect.bisect_left(self._shift_pos, pos + length)
        if k < len(self._shift_pos):
            shifts.append(self._shift_val[k])
        shifts.append(0)
        return list(dict.fromkeys(shifts))

    def _literal(self, builder: _Builder, pos: int, data: bytes, bsdiff: bool = True) -> None:
        """Encode bytes that match no base block: best of bsdiff, aligned difference, literal."""
        import bsdiff4.core

        base = self.base.data
        shifts = self._shifts_near(pos, len(data))
        options: list[tuple[int, str, list[Extent], list[Control], bytes, bytes]] = [
            (len(data) + 16, "literal", [], [(0, len(data), 0)], b"", data)
        ]
        for s in shifts:  # a slightly changed file in place (e.g. fine-tuned weights)
            if pos + s >= 0 and pos + s + len(data) <= len(base):
                diff = _subtract(data, base[pos + s : pos + s + len(data)])
                ctl = [(len(data), 0, 0)]
                ext = [Extent(pos + s, len(data))]
                options.append((_zsize(ctl, diff, b""), "aligned", ext, ctl, diff, b""))
        windows = _windows(pos, len(data), shifts, len(base))
        room = MAX_REFERENCE - builder.ref_len - 2 * self.chunk_size
        windows = _clip(windows, room) if bsdiff else []
        if windows:
            ref = b"".join(base[e.offset : e.offset + e.length] for e in windows)
            bcontrol, bdiff, bextra = bsdiff4.core.diff(ref, data)
            controls = _decode_controls(bcontrol)
            if _in_range(controls, len(ref)):  # bsdiff may read past R's ends (as zeros)
                size = _zsize(controls, bdiff, bextra)
                options.append((size, "bsdiff", windows, controls, bdiff, bextra))
        _size, kind, ext, ctl, diff, extra = min(options, key=lambda o: o[0])
        with self._stats_lock:
            self.stats[kind] += 1
        at = builder.add_ref(ext) if ext else builder.pos
        builder.emit(at, ctl, diff, extra)

    def _verify(self, wire: bytes, chunk: bytes, index: int) -> None:
        where = f"delta chunk {index}"
        parsed = parse_chunk(wire, len(chunk), len(self.base.data), where)
        data = self.base.data

        def read_at(offset: int, view: memoryview) -> None:
            view[:] = data[offset : offset + len(view)]

        if apply_parsed(parsed, read_at, len(chunk), where) != chunk:
            raise DeltaError(f"{where}: the encoded chunk does not rebuild the image (encoder bug)")


def _clip(windows: list[Extent], room: int) -> list[Extent]:
    out: list[Extent] = []
    for e in windows:
        take = min(e.length, room)
        if take <= 0:
            break
        out.append(Extent(e.offset, take))
        room -= take
    return out


def _subtract(new: bytes, old: bytes) -> bytes:
    """Bytewise ``new - old`` mod 256 (what the device adds back)."""
    import numpy as np

    a = np.frombuffer(new, dtype=np.uint8)
    b = np.frombuffer(old, dtype=np.uint8)
    return (a - b).tobytes()


def _in_range(controls: list[tuple[int, int, int]], ref_len: int) -> bool:
    pos = 0
    for add, copy, seek in controls:
        if add < 0 or copy < 0 or (add and (pos < 0 or pos + add > ref_len)):
            return False
        pos += add + seek
    return True


def iter_delta_chunks(
    base_path: Path, new_path: Path, chunk_size: int, level: int = 19, workers: int | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Yield (image chunk, delta wire chunk) for each chunk of ``new_path`` against the base.

    Chunks are encoded on ``workers`` threads (default: the host's cores, at most
    ``ENCODE_WORKERS``): bsdiff, zstd and xz release the GIL, and with the whole new image
    matched first each chunk depends only on read-only state, so the output is the same bytes
    in the same order as one thread's. Memory: the base's block index (~40 bytes per 4 KiB
    block), plus per thread one chunk's reference (<= ``MAX_REFERENCE``) and bsdiff's suffix
    array over it; both images are read from their files (:class:`FileBytes`), not held.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    new = FileBytes(new_path)
    encoder = DeltaEncoder(BaseIndex.load(base_path), chunk_size, level, new)
    count = workers if workers is not None else min(os.cpu_count() or 1, ENCODE_WORKERS)

    def job(i: int) -> tuple[bytes, bytes]:
        chunk = new[i * chunk_size : (i + 1) * chunk_size]
        return chunk, encoder.encode(i, chunk)

    pending: deque[Future[tuple[bytes, bytes]]] = deque()
    with ThreadPoolExecutor(max(1, count), thread_name_prefix="delta-encode") as pool:
        try:
            for i in range((len(new) + chunk_size - 1) // chunk_size):
                pending.append(pool.submit(job, i))
                if len(pending) > 2 * count:  # bounded look-ahead, results in order
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
    log.info("delta %s -> %s: %s", base_path, new_path, dict(encoder.stats))


def image_digest(path: Path) -> tuple[int, str]:
    """(size, sha256) of a whole image file: the ``base`` a delta names."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


__all__ = ["BaseIndex", "DeltaEncoder", "image_digest", "iter_delta_chunks"]
