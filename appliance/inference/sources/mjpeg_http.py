"""MJPEG over HTTP (``multipart/x-mixed-replace``), read in Python and decoded with simplejpeg.

What most IP cameras, mjpg-streamer, motion and ``ffmpeg -f mpjpeg`` serve: one HTTP response
whose body is a sequence of JPEG parts separated by a boundary. It needs no FFmpeg and no
OpenCV, so every frozen runtime reads it (simplejpeg is in all of them). A server answering with
another content type (an MPEG-TS or HLS stream) raises :class:`NotMjpegStream`, and the caller
hands the URL to FFmpeg instead.

Timeouts: the connection and the response headers wait at most ``OPEN_TIMEOUT_MS``; then every
socket read waits at most ``READ_TIMEOUT_MS``, so a camera that stops sending is a
:class:`SourceError` naming it, never a hang. ``user:password@`` in the URL is sent as HTTP Basic
authentication. The first frame is read while opening.
"""

from __future__ import annotations

import base64
import http.client
import time
from typing import Protocol
from urllib.parse import unquote, urlsplit

from appliance.inference.errors import SourceError
from appliance.inference.sources.frame import OPEN_TIMEOUT_MS, READ_TIMEOUT_MS, Frame, redact
from appliance.inference.sources.pixels import mjpeg_to_bgr

MAX_PART = 32 << 20  # a JPEG part larger than this is not a camera frame
MAX_HEADER_LINES = 64


class NotMjpegStream(SourceError):
    """The URL answers, but not with multipart MJPEG (hand it to a video decoder instead)."""


class MjpegHttpSource:
    """A ``multipart/x-mixed-replace`` MJPEG stream over HTTP(S)."""

    live = True

    def __init__(self, uri: str) -> None:
        self.uri = redact(uri)  # messages and logs never show the password
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"{self.uri}: not an http(s) URL with a host")
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._conn = cls(parts.hostname, parts.port, timeout=OPEN_TIMEOUT_MS / 1000)
        headers = {"Accept": "multipart/x-mixed-replace, image/jpeg, */*"}
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._index = 0
        try:
            self._conn.request("GET", path, headers=headers)
            self._resp = self._conn.getresponse()
            if self._resp.status != 200:
                raise SourceError(
                    f"{self.uri}: the server answered HTTP {self._resp.status} {self._resp.reason}"
                    + (
                        " (check the user and password in the URL)"
                        if self._resp.status == 401
                        else ""
                    )
                )
            ctype = self._resp.getheader("Content-Type", "")
            boundary = _boundary(ctype)
            if boundary is None:
                raise NotMjpegStream(
                    f"{self.uri}: the server sends {ctype or 'no content type'}, not MJPEG"
                )
            self._parts = MultipartReader(self._resp, boundary, self.uri)
            if self._conn.sock is not None:
                self._conn.sock.settimeout(READ_TIMEOUT_MS / 1000)
            self._first: Frame | None = self._next("first frame", OPEN_TIMEOUT_MS)
        except SourceError:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise SourceError(
                f"{self.uri}: cannot open the stream: {_why(exc, OPEN_TIMEOUT_MS)}"
            ) from None

    def _next(self, what: str, timeout_ms: int) -> Frame:
        t0 = time.monotonic()
        try:
            data = self._parts.next_part()
        except EOFError:
            raise SourceError(f"{self.uri}: the server closed the stream") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceError(f"{self.uri}: no {what}: {_why(exc, timeout_ms)}") from None
        try:
            image = mjpeg_to_bgr(data)
        except SourceError as exc:
            raise SourceError(f"{self.uri}: {exc}") from None
        t1 = time.monotonic()
        self._index += 1
        return Frame(image, "BGR", self._index - 1, t1, (t1 - t0) * 1000)

    def read(self) -> Frame | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._next("frame", READ_TIMEOUT_MS)

    def close(self) -> None:
        self._conn.close()


class Readable(Protocol):
    """What the parser reads from: an HTTP response, or any binary stream (tests)."""

    def readline(self, limit: int = -1, /) -> bytes: ...

    def read(self, n: int = -1, /) -> bytes: ...


class MultipartReader:
    """The parts of a ``multipart/x-mixed-replace`` body, one JPEG at a time (untrusted bytes).

    Every part is bounded (``MAX_PART`` bytes, ``MAX_HEADER_LINES`` header lines, lines of at
    most 4 KiB while looking for a boundary); a body that breaks the format is a SourceError,
    the end of the body is EOFError.
    """

    def __init__(self, stream: Readable, boundary: bytes, uri: str) -> None:
        self._stream, self._boundary, self.uri = stream, boundary.lstrip(b"-"), uri
        self._after_boundary = False

    def _line(self) -> bytes:
        line = self._stream.readline(4096)
        if not line:
            raise EOFError
        return line

    def next_part(self) -> bytes:
        """The bytes of the next part (boundary line, part headers, then the JPEG)."""
        if not self._after_boundary:
            for _ in range(MAX_HEADER_LINES):
                if self._is_boundary(self._line()):
                    break
            else:
                raise SourceError(
                    f"{self.uri}: no multipart boundary {self._boundary.decode(errors='replace')!r}"
                    " found"
                )
        self._after_boundary = False
        length = self._part_length()
        if length is None:
            return self._until_boundary()
        if not 0 < length <= MAX_PART:
            raise SourceError(f"{self.uri}: a part of {length} bytes is not a camera frame")
        data = self._stream.read(length)
        if len(data) < length:
            raise EOFError
        return data

    def _is_boundary(self, line: bytes) -> bool:
        """``--boundary`` (or ``--boundary--``); cameras disagree on the dashes: ignore them."""
        text = line.strip()
        return text.startswith(b"--") and text.lstrip(b"-").startswith(self._boundary)

    def _part_length(self) -> int | None:
        """Read a part's headers up to the blank line; its Content-Length, if it has one."""
        length = None
        for _ in range(MAX_HEADER_LINES):
            line = self._line().strip()
            if not line:
                return length
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise SourceError(f"{self.uri}: bad part header {line!r}") from None
        raise SourceError(f"{self.uri}: a part has more than {MAX_HEADER_LINES} header lines")

    def _until_boundary(self) -> bytes:
        """A part without a length: the JPEG runs up to the next boundary line."""
        data = bytearray()
        while True:
            line = self._stream.readline(1 << 16)
            if not line:
                raise EOFError
            if self._is_boundary(line):
                self._after_boundary = True
                return bytes(data).removesuffix(b"\r\n").removesuffix(b"\n")
            data += line
            if len(data) > MAX_PART:
                raise SourceError(
                    f"{self.uri}: a part runs past {MAX_PART} bytes without a boundary"
                )


def _boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/x-mixed-replace`` content type, else None."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/x-mixed-replace":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').lstrip("-").encode() or None
    return None


def _why(exc: BaseException, timeout_ms: int) -> str:
    if isinstance(exc, TimeoutError):
        return f"nothing for {timeout_ms / 1000:.1f} s (camera or stream stalled)"
    return f"{type(exc).__name__}: {exc}"
