"""Canonical ustar members, written and read strictly front to back from any byte stream.

Every header the writer emits is a pure function of (name, size): mode 0644, uid/gid 0, mtime
0, empty owner names, type ``0``. The reader rebuilds that header and demands byte equality,
so no bit of a bundle is outside what the signature (manifest) or the digests (payloads) cover.
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from appliance.bundle.errors import (
    EmptyBundleError,
    SizeLimitError,
    TarHeaderError,
    TrailingDataError,
    TruncatedBundleError,
    UnsafeMemberError,
)

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
_ZERO_BLOCK = bytes(BLOCK)
# Bytes accepted after the end marker: none (the writer emits exactly two zero blocks).
_UNSAFE_TYPES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"x": "pax header",
    b"g": "pax global header",
    b"L": "GNU long name",
    b"K": "GNU long link",
}


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` bytes of member data up to the next block."""
    return -size % BLOCK


def build_header(name: str, size: int) -> bytes:
    """The one canonical ustar header for a regular file ``name`` of ``size`` bytes."""
    raw = name.encode("ascii")
    if not raw or len(raw) > 100:
        raise ValueError(f"member name {name!r} must be 1..100 ASCII bytes")
    if not 0 <= size < 8**11:
        raise ValueError(f"member size {size} does not fit a ustar header")
    head = bytearray(BLOCK)
    head[0 : len(raw)] = raw
    head[100:108] = b"0000644\0"
    head[108:116] = b"0000000\0"
    head[116:124] = b"0000000\0"
    head[124:136] = b"%011o\0" % size
    head[136:148] = b"00000000000\0"
    head[148:156] = b" " * 8
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[329:337] = b"0000000\0"
    head[337:345] = b"0000000\0"
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class StreamReader:
    """Exact reads from a forward-only stream, tracking the offset for error messages."""

    def __init__(self, stream: BinaryIO, source: str = "bundle") -> None:
        self._stream = stream
        self.source = source
        self.offset = 0

    def read_exact(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes or raise TruncatedBundleError (EmptyBundleError at 0)."""
        if n == 0:
            return b""
        first = self._read(n)
        if len(first) == n:
            self.offset += n
            return bytes(first)
        parts = [first]
        got = len(first)
        while got < n:
            more = self._read(n - got)
            if not more:
                if self.offset == 0 and got == 0:
                    raise EmptyBundleError(f"{self.source} is empty (0 bytes); it is not a bundle")
                raise TruncatedBundleError(
                    f"{self.source} ends at byte {self.offset + got} inside {what} "
                    f"({got} of {n} bytes); the download or copy is incomplete, fetch it again"
                )
            parts.append(more)
            got += len(more)
        self.offset += n
        return b"".join(parts)

    def _read(self, n: int) -> bytes:
        try:
            return self._stream.read(n)
        except Exception as exc:
            # An HTTP body shorter than its Content-Length: the same as a truncated file. Only
            # an HTTP stream raises it, and that stream imported http.client: a file or pipe
            # install does not pay its imports (~8 MiB of RSS with email and ssl).
            client = sys.modules.get("http.client")
            if client is None or not isinstance(exc, client.IncompleteRead):
                raise
            raise TruncatedBundleError(
                f"{self.source} ended early after byte {self.offset} while reading "
                f"({len(exc.partial)} more bytes arrived); fetch it again"
            ) from None

    def at_eof(self) -> bool:
        """True if the stream has no more bytes (reads at most one byte)."""
        extra = self._read(1)
        if extra:
            self.offset += 1
            return False
        return True


def _octal(field: bytes, what: str, offset: int) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text or any(c not in b"01234567" for c in text):
        # The field's bytes are not quoted: before the signature is checked they are only
        # "some file's bytes", and an error text must not disclose a file it was pointed at.
        raise TarHeaderError(
            f"tar header at byte {offset}: the {what} field is not octal; not a bundle"
        )
    return int(text, 8)


class Header:
    """A parsed member header: name, size and the offset it was read at."""

    __slots__ = ("name", "offset", "size")

    def __init__(self, name: str, size: int, offset: int) -> None:
        self.name = name
        self.size = size
        self.offset = offset


def read_header(reader: StreamReader, expected: str, max_size: int) -> Header | None:
    """Read the next header; None at the end-of-archive marker.

    Checks, in order: checksum (garbage), type (links, devices, ...), name safety, size cap,
    then byte-equality with the canonical header. Name-order checks are the caller's job.
    """
    offset = reader.offset
    block = reader.read_exact(BLOCK, f"the header of {expected}")
    if block == _ZERO_BLOCK:
        if reader.read_exact(BLOCK, "the end-of-archive marker") != _ZERO_BLOCK:
            raise TarHeaderError(
                f"damaged end-of-archive marker at byte {offset}: its second block is not zero"
            )
        return None
    stored = _octal(block[148:156], "checksum", offset)
    if stored != sum(block[:148]) + 256 + sum(block[156:]):
        raise TarHeaderError(
            f"tar header at byte {offset} has a bad checksum: the bundle is corrupt or not a bundle"
        )
    name = block[0:100].split(b"\0", 1)[0]
    prefix = block[345:500].split(b"\0", 1)[0]
    full = (prefix + b"/" + name) if prefix else name
    # A name is quoted only when it is the one expected: an error text quotes no bytes of an
    # input that is not yet authenticated (any file the device was pointed at).
    shown = repr(expected) if full == expected.encode() else f"(not {expected})"
    typeflag = block[156:157]
    if typeflag in _UNSAFE_TYPES:
        raise UnsafeMemberError(
            f"member {shown} at byte {offset} is a {_UNSAFE_TYPES[typeflag]}; "
            "bundles hold regular files only"
        )
    if typeflag not in (b"0", b"\0"):
        raise UnsafeMemberError(
            f"member {shown} at byte {offset} has an unsupported tar type; only regular files"
        )
    if full.startswith(b"/") or b".." in full.split(b"/") or b"/" in full:
        raise UnsafeMemberError(
            f"member name {shown} at byte {offset} is absolute, has '..' or a directory; refused"
        )
    size = _octal(block[124:136], "size", offset)
    if size > max_size:
        raise SizeLimitError(
            f"member {shown} at byte {offset} declares more bytes than the limit here ({max_size})"
        )
    try:
        canonical = build_header(full.decode("ascii"), size)
    except (UnicodeDecodeError, ValueError):
        raise TarHeaderError(
            f"member name {shown} at byte {offset} is not a canonical name"
        ) from None
    if block != canonical:
        at = next(i for i in range(BLOCK) if block[i] != canonical[i])
        raise TarHeaderError(
            f"tar header of {shown} at byte {offset} differs from the canonical header at "
            f"header byte {at}; bundles are written only by write_bundle/kiln bundle"
        )
    return Header(full.decode("ascii"), size, offset)


def read_padding(reader: StreamReader, size: int, name: str) -> None:
    """Consume and check the zero padding after a member of ``size`` bytes."""
    pad = padding(size)
    if pad and reader.read_exact(pad, f"the padding after {name}") != bytes(pad):
        raise TarHeaderError(
            f"non-zero padding after member {name!r} (before byte {reader.offset})"
        )


def expect_eof(reader: StreamReader) -> None:
    """After the end marker nothing may follow."""
    if not reader.at_eof():
        raise TrailingDataError(
            f"{reader.source} has data after its end-of-archive marker "
            f"(byte {reader.offset - 1}); refused"
        )
