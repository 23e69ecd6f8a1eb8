"""Raw H.264 elementary streams (``.h264``, ``.264``: Annex B), split into access units.

The file is read in 1 MiB pieces, never whole: NAL units are split on start codes
(``00 00 01``, with or without a leading zero byte) and grouped into access units the way
H.264 (7.4.1.2.3) ends one: an access unit delimiter, SEI, SPS or PPS after a picture's slices,
or a slice whose ``first_mb_in_slice`` is 0 after another picture's slices. A file that does
not begin with a start code is not Annex B, and an access unit larger than ``MAX_UNIT`` is a
:class:`~appliance.inference.sources.mp4.Mp4Error` naming the file and the byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from appliance.inference.errors import SourceError
from appliance.inference.sources.mp4 import MAX_SAMPLE, START, Mp4Error

MAX_UNIT = MAX_SAMPLE
CHUNK = 1 << 20
_VCL = (1, 5)
_ENDS_AU = (6, 7, 8, 9, 14, 15, 16, 17, 18)  # SEI, SPS, PPS, AUD, prefix/subset SPS, reserved


class AnnexBStream:
    """The access units of an Annex B file, in decode order (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            self._file = path.open("rb")
        except OSError as exc:
            raise SourceError(f"{path}: cannot open: {exc.strerror}") from None
        head = self._file.read(64).lstrip(b"\x00")
        if not (head.startswith(b"\x01") and len(head) > 1):
            self._file.close()
            raise Mp4Error(
                f"{path}: not an H.264 Annex B stream (no start code 00 00 01 at its beginning)"
            )

    def _nal_units(self) -> Iterator[tuple[int, bytes]]:
        """(byte offset, NAL unit without its start code) for every NAL unit of the file."""
        self._file.seek(0)
        buf, base, eof = bytearray(), 0, False
        pos = -1  # start of the current NAL unit's payload in buf, -1 before the first
        while True:
            if pos < 0 and (found := buf.find(b"\x00\x00\x01")) >= 0:
                pos = found + 3
            while pos >= 0 and ((nxt := buf.find(b"\x00\x00\x01", pos)) >= 0 or eof):
                end = nxt if nxt >= 0 else len(buf)
                nal = bytes(buf[pos:end]).rstrip(b"\x00")  # trailing zeros, 00 00 00 01
                if nal:
                    yield base + pos, nal
                if nxt < 0:
                    return
                pos = nxt + 3
            if eof:
                return
            if pos >= 0:  # keep the unit being read, drop what was yielded
                if len(buf) - pos > MAX_UNIT:
                    raise Mp4Error(
                        f"{self.name}: a NAL unit at byte {base + pos} is larger than {MAX_UNIT} "
                        "bytes: damaged, or not an H.264 stream"
                    )
                del buf[: pos - 3]
                base, pos = base + pos - 3, 3
            elif len(buf) > 2:  # no start code yet: keep what may be its first two bytes
                drop = len(buf) - 2
                del buf[:drop]
                base += drop
            chunk = self._read()
            eof = not chunk
            buf += chunk

    def _read(self) -> bytes:
        try:
            return self._file.read(CHUNK)
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot read: {exc.strerror}") from None

    def units(self) -> Iterator[tuple[int, bytes]]:
        """(byte offset, Annex B access unit) in decode order, from the file's beginning."""
        parts: list[bytes] = []
        size, start, has_slice = 0, 0, False
        for offset, nal in self._nal_units():
            kind = nal[0] & 0x1F
            first_slice = kind in _VCL and len(nal) > 1 and nal[1] & 0x80  # first_mb_in_slice 0
            if has_slice and (kind in _ENDS_AU or first_slice):
                yield start, b"".join(parts)
                parts, size, has_slice = [], 0, False
            if not parts:
                start = offset
            size += len(nal) + 4
            if size > MAX_UNIT:
                raise Mp4Error(
                    f"{self.name}: an access unit at byte {start} is larger than {MAX_UNIT} bytes"
                )
            parts += (START, nal)
            has_slice = has_slice or kind in _VCL
        if parts:
            yield start, b"".join(parts)

    def close(self) -> None:
        self._file.close()
