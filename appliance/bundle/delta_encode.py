"""Encode a delta (method ``ekdelta1``) from a base slot image to a new one, chunk by chunk.

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
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.delta import (
    BLOCK,
    MAX_REFERENCE,
    DeltaError,
    Extent,
    apply_parsed,
    encode_chunk,
    parse_chunk,
)

log = logging.getLogger(__name__)
WINDOW_MARGIN = 1 << 20  # bytes of base on each side of a candidate window
MAX_WINDOWS = 4


def _block_key(block: bytes | memoryview) -> bytes:
    return hashlib.blake2b(block, digest_size=16).digest()


@dataclass
class BaseIndex:
    """The base image in memory plus a block-hash index of its 4 KiB blocks."""

    data: bytes
    blocks: dict[bytes, int]

    @classmethod
    def load(cls, path: Path) -> BaseIndex:
        """Read ``path`` and index each whole 4 KiB block (first occurrence wins)."""
        data = Path(path).read_bytes()
        blocks: dict[bytes, int] = {}
        view = memoryview(data)
        for i in range(len(data) // BLOCK):
            blocks.setdefault(_block_key(view[i * BLOCK : (i + 1) * BLOCK]), i)
        return cls(data, blocks)

    def block(self, i: int) -> bytes:
        """Base block ``i``."""
        return self.data[i * BLOCK : (i + 1) * BLOCK]


def _match_blocks(index: BaseIndex, chunk: bytes, prev: int | None) -> list[int | None]:
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


class DeltaEncoder:
    """Encodes each chunk of a new image against one indexed base image."""

    def __init__(self, base: BaseIndex, chunk_size: int, level: int = 19) -> None:
        if chunk_size % BLOCK:
            raise DeltaError(f"delta chunk size {chunk_size} must be a multiple of {BLOCK}")
        self.base = base
        self.chunk_size = chunk_size
        self.level = level
        self._shift_pos: list[int] = []  # new-image offsets of matched blocks, ascending
        self._shift_val: list[int] = []  # their shift (base offset - new offset)
        self.stats: Counter[str] = Counter()

    def encode(self, index: int, chunk: bytes) -> bytes:
        """The wire bytes of delta chunk ``index`` (verified by applying it again)."""
        start = index * self.chunk_size
        prev_block = None
        if self._shift_pos and self._shift_pos[-1] == start - BLOCK:
            prev_block = (start - BLOCK + self._shift_val[-1]) // BLOCK
        matches = _match_blocks(self.base, chunk, prev_block)
        for j, m in enumerate(matches):
            if m is not None:
                self._shift_pos.append(start + j * BLOCK)
                self._shift_val.append(m * BLOCK - start - j * BLOCK)
        if all(m is not None for m in matches):
            extents = _extents_of([m for m in matches if m is not None])
            wire = encode_chunk(extents, [(len(chunk), 0, 0)], bytes(len(chunk)), b"", self.level)
            self.stats["copy_chunks"] += 1
        else:
            wire = self._bsdiff_chunk(start, chunk, matches)
            self.stats["diff_chunks"] += 1
        self._verify(wire, chunk, index)
        return wire

    def _candidate_shifts(self, start: int, matches: list[int | None]) -> list[int]:
        local = Counter(
            m * BLOCK - start - j * BLOCK for j, m in enumerate(matches) if m is not None
        )
        shifts = [s for s, _n in local.most_common(MAX_WINDOWS - 1)]
        # The nearest matched blocks before and after this chunk (the stream's local shift).
        k = bisect.bisect_left(self._shift_pos, start)
        if k > 0:
            shifts.append(self._shift_val[k - 1])
        shifts.append(0)
        seen: list[int] = []
        for s in shifts:
            if s not in seen:
                seen.append(s)
        return seen[:MAX_WINDOWS]

    def _bsdiff_chunk(self, start: int, chunk: bytes, matches: list[int | None]) -> bytes:
        import bsdiff4.core

        windows = _windows(start, len(chunk), self._candidate_shifts(start, matches),
                           len(self.base.data))  # fmt: skip
        ref = b"".join(self.base.data[e.offset : e.offset + e.length] for e in windows)
        bcontrol, bdiff, bextra = bsdiff4.core.diff(ref, chunk)
        controls = _decode_controls(bcontrol)
        if _in_range(controls, len(ref)):
            return encode_chunk(windows, controls, bdiff, bextra, self.level)
        # bsdiff may read past R's ends (counting as zero bytes); fall back to all-literal.
        self.stats["literal_fallback"] += 1
        return encode_chunk([], [(0, len(chunk), 0)], b"", chunk, self.level)

    def _verify(self, wire: bytes, chunk: bytes, index: int) -> None:
        where = f"delta chunk {index}"
        parsed = parse_chunk(wire, len(chunk), len(self.base.data), where)
        ref = b"".join(self.base.data[e.offset : e.offset + e.length] for e in parsed.extents)
        if apply_parsed(parsed, ref, len(chunk), where) != chunk:
            raise DeltaError(f"{where}: the encoded chunk does not rebuild the image (encoder bug)")


def _in_range(controls: list[tuple[int, int, int]], ref_len: int) -> bool:
    pos = 0
    for add, copy, seek in controls:
        if add < 0 or copy < 0 or (add and (pos < 0 or pos + add > ref_len)):
            return False
        pos += add + seek
    return True


def iter_delta_chunks(
    base_path: Path, new_path: Path, chunk_size: int, level: int = 19
) -> Iterator[tuple[bytes, bytes]]:
    """Yield (image chunk, delta wire chunk) for each chunk of ``new_path`` against the base."""
    encoder = DeltaEncoder(BaseIndex.load(base_path), chunk_size, level)
    with open(new_path, "rb") as handle:
        i = 0
        while chunk := handle.read(chunk_size):
            yield chunk, encoder.encode(i, chunk)
            i += 1
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
