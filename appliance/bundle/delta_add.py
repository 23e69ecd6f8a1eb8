"""Bytewise arithmetic of delta chunks: adding bsdiff's diff to the reference, unshuffling.

Split from :mod:`appliance.bundle.delta_apply` (the parser and the reference reader); the
format is FORMAT.md's, the reasons for doing it this way FORMAT.md's "Apply".
"""

from __future__ import annotations


def all_zero(body: bytes | bytearray, start: int, end: int) -> bool:
    """True if ``body[start:end]`` is all zero bytes (memcmp per span: ~30x ``bytes.count``)."""
    return all(
        body.startswith(_ZEROS[: min(DIFF_SPAN, end - at)], at)
        for at in range(start, end, DIFF_SPAN)
    )


def unshuffled(body: bytes | bytearray, diff_start: int, extra_start: int) -> bytearray:
    """``body`` with its diff and extra sections unshuffled: one copy, strided in C."""
    out = bytearray(body)
    for start, end in ((diff_start, extra_start), (extra_start, len(body))):
        q = (end - start) // 4
        for lane in range(4):
            out[start + lane : start + 4 * q : 4] = body[start + lane * q : start + (lane + 1) * q]
    return out


# Bytewise addition mod 256 without numpy (it would cost the device ~18 MiB of RSS just to
# import): SWAR on Python integers, ADD_SLICE bytes at a time, no carry crossing a byte.
ADD_SLICE = 64 << 10
_HIGH = int.from_bytes(b"\x80" * ADD_SLICE, "little")
_LOW = int.from_bytes(b"\x7f" * ADD_SLICE, "little")


def add_mod256(dst: memoryview, src: memoryview) -> None:
    """``dst[i] = (dst[i] + src[i]) % 256`` for every byte (equal lengths)."""
    for at in range(0, len(dst), ADD_SLICE):
        n = min(ADD_SLICE, len(dst) - at)
        high, low = (
            (_HIGH, _LOW)
            if n == ADD_SLICE
            else (_HIGH >> (8 * (ADD_SLICE - n)), _LOW >> (8 * (ADD_SLICE - n)))
        )
        x = int.from_bytes(dst[at : at + n], "little")
        y = int.from_bytes(src[at : at + n], "little")
        dst[at : at + n] = (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(n, "little")


DIFF_SPAN = 64 << 10  # an all-zero span of the diff this long is skipped in one comparison
DIFF_BLOCK = 1024  # else its blocks are looked at one by one
_ZEROS = bytes(DIFF_SPAN)
_ZERO_BLOCK = bytes(DIFF_BLOCK)


def add_diff(dst: memoryview, body: bytes | bytearray, start: int) -> None:
    """``dst[i] = (dst[i] + body[start + i]) % 256``, skipping stretches where the diff is zero.

    bsdiff's diff is mostly zero bytes (R already holds them): on a numpy wheel upgrade 0.7 %
    of 158 MB of diff is not zero, in ~7,600 regions. A ``DIFF_SPAN`` of zeros is skipped with
    one ``startswith`` (a memcmp, no copy); a span that holds a non-zero byte is looked at in
    ``DIFF_BLOCK`` blocks, and only runs of blocks holding a non-zero byte go through
    :func:`add_mod256` (~8 ms per MiB): the add costs about the diff's non-zero share.
    """
    n = len(dst)
    view = memoryview(body)
    run = -1  # first byte of the current run of non-zero blocks, -1 outside one
    for span in range(0, n, DIFF_SPAN):
        span_end = min(span + DIFF_SPAN, n)
        if body.startswith(_ZEROS[: span_end - span], start + span):
            if run >= 0:
                add_mod256(dst[run:span], view[start + run : start + span])
                run = -1
            continue
        for at in range(span, span_end, DIFF_BLOCK):
            end = min(at + DIFF_BLOCK, span_end)
            zeros = _ZERO_BLOCK if end - at == DIFF_BLOCK else _ZEROS[: end - at]
            if body.startswith(zeros, start + at):
                if run >= 0:
                    add_mod256(dst[run:at], view[start + run : start + at])
                    run = -1
            elif run < 0:
                run = at
    if run >= 0:
        add_mod256(dst[run:n], view[start + run : start + n])
