"""RTSP cameras with H.264, read in Python and decoded by openh264: no OpenCV, no ffmpeg.

RTSP 1.0 (RFC 2326) over one TCP connection, RTP interleaved on it (``RTP/AVP/TCP``): the
transport that crosses NAT and cellular site links, where UDP from the camera often never
arrives. ``OPTIONS``, ``DESCRIBE`` (the SDP), ``SETUP`` of the first H.264 video track, ``PLAY``;
``TEARDOWN`` on close. ``user:password@`` in the URL answers a 401 with Basic or Digest auth.
The session is kept alive with ``GET_PARAMETER`` (``OPTIONS`` where the server does not offer
it) every half of the server's session timeout.

Timeouts: connecting, every response and the first frame wait at most ``OPEN_TIMEOUT_MS``;
every later frame at most ``READ_TIMEOUT_MS``, whatever arrives meanwhile (RTCP, keep-alive
answers, packets that make no picture): a dead or stalled camera is a :class:`SourceError`,
never a hang. Every message is bounded (``rtsp_protocol.py``, ``h264_rtp.py``; an interleaved
packet is at most 64 KiB by its 16-bit length). Errors name the URL without its credentials.
The first frame is read while opening, as the other live sources do, and the pipeline reopens a
lost source with its backoff.
"""

from __future__ import annotations

import re
import socket
import time
from collections import deque
from urllib.parse import unquote, urlsplit

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources.frame import OPEN_TIMEOUT_MS, READ_TIMEOUT_MS, Frame, redact
from appliance.inference.sources.h264_rtp import H264Depacketizer
from appliance.inference.sources.openh264 import DecoderMissing, H264Decoder
from appliance.inference.sources.rtsp_protocol import (
    MAX_HEAD,
    Authenticator,
    Response,
    RtspProtocolError,
    parse_challenges,
    parse_head,
    parse_sdp,
    request,
    session_id,
    sprop_parameter_sets,
)


class NotH264Stream(SourceError):
    """The camera answers, but its video is not H.264 (another decoder's job)."""


class Wire:
    """A buffered RTSP connection: responses and interleaved packets, each within a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError
        self._buf += chunk

    def _take(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def message(self, deadline: float) -> tuple[int, bytes] | Response:
        """The next interleaved packet ``(channel, data)``, or the next RTSP response."""
        while not self._buf:
            self._fill(deadline)
        if self._buf[0] == 0x24:  # '$' channel length16 data
            head = self._take(4, deadline)
            return head[1], self._take(int.from_bytes(head[2:4], "big"), deadline)
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEAD:
                raise RtspProtocolError(f"no end of a response head within {MAX_HEAD} bytes")
            self._fill(deadline)
        if end > MAX_HEAD:
            raise RtspProtocolError(f"a response head of more than {MAX_HEAD} bytes")
        head = self._take(end + 4, deadline)[:end]
        if re.match(rb"[A-Z_]{1,32} \S+ RTSP/1\.\d\r?\n", head + b"\n"):  # from the server: skip
            match = re.search(rb"(?im)^content-length\s*:\s*(\d{1,5})\s*$", head)
            self._take(int(match.group(1)) if match else 0, deadline)
            return Response(0, "request from the server", {})
        response = parse_head(head)
        response.body = self._take(response.content_length, deadline)
        return response


class RtspSource:
    """An RTSP camera sending H.264 (see the module docstring)."""

    live = True

    def __init__(
        self,
        uri: str,
        open_timeout_ms: int = OPEN_TIMEOUT_MS,
        read_timeout_ms: int = READ_TIMEOUT_MS,
    ) -> None:
        """Connect, start the session and read the first frame (timeouts: module docstring)."""
        self._open_ms, self._read_ms = open_timeout_ms, read_timeout_ms
        self.uri = redact(uri)  # what errors, logs and the grabber thread's name show
        parts = urlsplit(uri)
        if parts.scheme != "rtsp" or not parts.hostname:
            raise SourceError(f"{self.uri}: not an rtsp:// URL with a host")
        self._url = redact(uri)
        user = unquote(parts.username) if parts.username is not None else None
        self._auth = Authenticator(user, unquote(parts.password or "")) if user else None
        self._cseq = 0
        self._session = ""
        self._index = 0
        self._keepalive = "OPTIONS"
        self._keepalive_period = 30.0
        self._next_keepalive = 0.0
        self._keepalive_cseq = -1
        self.keepalives = 0  # keep-alive requests the camera answered
        self._channel = 0
        self._pending: deque[np.ndarray] = deque()
        self._sock: socket.socket | None = None
        try:
            self._decoder = H264Decoder()
        except DecoderMissing as exc:
            raise DecoderMissing(f"{self.uri}: {exc}") from None
        try:
            self._sock = socket.create_connection(
                (parts.hostname, parts.port or 554), timeout=self._open_ms / 1000
            )
            self._wire = Wire(self._sock)
            self._first: Frame | None = self._start()
        except SourceError:
            self.close()
            raise
        except (OSError, EOFError) as exc:
            self.close()
            raise SourceError(
                f"{self.uri}: cannot open the stream: {_why(exc, self._open_ms)}"
            ) from None

    def _start(self) -> Frame:
        """OPTIONS, DESCRIBE, SETUP, PLAY, then the first frame."""
        public = self._request("OPTIONS", self._url).header("public").upper()
        if "GET_PARAMETER" in public:
            self._keepalive = "GET_PARAMETER"
        described = self._request("DESCRIBE", self._url, {"Accept": "application/sdp"})
        base = described.header("content-base") or described.header("content-location")
        tracks = parse_sdp(described.body.decode("utf-8", "replace"), base or self._url)
        video = [t for t in tracks if t.encoding == "H264"]
        if not video:
            kinds = ", ".join(t.encoding or f"RTP payload type {t.payload_type}" for t in tracks)
            raise NotH264Stream(
                f"{self.uri}: the camera sends {kinds or 'no video track'}, not H.264; set the "
                "camera's stream to H.264, or use a runtime with the opencv extra"
            )
        track = video[0]
        setup = self._request(
            "SETUP", track.control, {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        )
        self._session, timeout = session_id(setup.header("session"))
        match = re.search(r"interleaved=(\d+)", setup.header("transport"))
        self._channel = int(match.group(1)) if match else 0
        self._keepalive_period = max(1.0, timeout / 2)
        self._request("PLAY", base or self._url, {"Range": "npt=0.000-"})
        self._next_keepalive = time.monotonic() + self._keepalive_period
        self._depay = H264Depacketizer(
            track.payload_type, sprop_parameter_sets(track.fmtp), self.uri
        )
        return self._next_frame("first frame", self._open_ms)

    def _send(self, method: str, url: str, headers: dict[str, str]) -> int:
        assert self._sock is not None
        self._cseq += 1
        if self._session:
            headers = {**headers, "Session": self._session}
        if self._auth is not None:
            headers = {**headers, **self._auth.header(method, url)}
        self._sock.settimeout(self._open_ms / 1000)
        self._sock.sendall(request(method, url, self._cseq, headers))
        return self._cseq

    def _request(self, method: str, url: str, headers: dict[str, str] | None = None) -> Response:
        """Send a request and wait for its answer (one retry after a 401 with credentials)."""
        for attempt in range(2):
            cseq = self._send(method, url, headers or {})
            response = self._response(cseq, method)
            if response.status != 401:
                break
            if self._auth is None:
                raise SourceError(
                    f"{self.uri}: the camera requires a user and password "
                    "(rtsp://user:password@host/...)"
                )
            if attempt or not self._auth.accept(
                parse_challenges(response.header("www-authenticate"))
            ):
                raise SourceError(
                    f"{self.uri}: authentication failed (401 {response.reason}); check the user "
                    "and password in the URL"
                )
        if response.status != 200:
            hint = " (check the path of the stream)" if response.status == 404 else ""
            raise SourceError(
                f"{self.uri}: {method} answered {response.status} {response.reason}{hint}"
            )
        return response

    def _response(self, cseq: int, method: str) -> Response:
        deadline = time.monotonic() + self._open_ms / 1000
        for _ in range(1000):  # interleaved packets and stale answers before ours: skip them
            try:
                msg = self._wire.message(deadline)
            except TimeoutError:
                raise SourceError(
                    f"{self.uri}: no answer to {method} for {self._open_ms / 1000:.1f} s "
                    "(camera stalled, or not an RTSP server)"
                ) from None
            except EOFError:
                raise SourceError(f"{self.uri}: the camera closed the connection") from None
            if isinstance(msg, Response) and msg.header("cseq").strip() == str(cseq):
                return msg
        raise SourceError(f"{self.uri}: no answer to {method} among 1000 messages")

    def _next_frame(self, what: str, timeout_ms: int) -> Frame:
        t0 = time.monotonic()
        deadline = t0 + timeout_ms / 1000
        try:
            while True:
                if time.monotonic() >= self._next_keepalive:
                    self._keepalive_cseq = self._send(self._keepalive, self._url, {})
                    self._next_keepalive = time.monotonic() + self._keepalive_period
                msg = self._wire.message(deadline)
                if isinstance(msg, Response):
                    self._answered(msg)
                    continue
                if msg[0] != self._channel:
                    continue  # RTCP
                for unit in self._depay.push(msg[1]):
                    errors = self._decoder.errors
                    # B-frames: pictures come in display order, some later than their unit
                    self._pending.extend(image for image, _ in self._decoder.decode_all(unit, 0))
                    if self._decoder.errors > errors:
                        self._depay.resync()  # a frame the decoder refused: next IDR
                if self._pending:
                    return self._frame(self._pending.popleft(), t0)
        except TimeoutError:
            raise SourceError(
                f"{self.uri}: no {what} for {timeout_ms / 1000:.1f} s (camera or stream stalled; "
                f"{self._depay.lost} RTP packets lost, {self._depay.dropped} frames dropped)"
            ) from None
        except EOFError:
            raise SourceError(f"{self.uri}: the camera closed the stream") from None
        except OSError as exc:
            raise SourceError(f"{self.uri}: no {what}: {_why(exc, timeout_ms)}") from None

    def _frame(self, image: np.ndarray, t0: float) -> Frame:
        t1 = time.monotonic()
        self._index += 1
        return Frame(image, "BGR", self._index - 1, t1, (t1 - t0) * 1000)

    def _answered(self, response: Response) -> None:
        """An answer while streaming: a keep-alive's (a refused one means the session is gone)."""
        if response.header("cseq").strip() != str(self._keepalive_cseq):
            return
        if response.status != 200:
            raise SourceError(
                f"{self.uri}: the keep-alive {self._keepalive} answered {response.status} "
                f"{response.reason}; the camera dropped the session"
            )
        self.keepalives += 1

    @property
    def auth_scheme(self) -> str:
        """The authentication the camera asked for (``basic``, ``digest``), ``""`` if none."""
        return self._auth.scheme if self._auth is not None else ""

    @property
    def lost(self) -> int:
        """RTP packets lost so far."""
        return self._depay.lost

    @property
    def dropped(self) -> int:
        """Frames dropped so far (broken by loss, or waiting for an IDR)."""
        return self._depay.dropped

    def read(self) -> Frame | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        if self._pending:  # decoded with an earlier unit (B-frames, or before an IDR)
            return self._frame(self._pending.popleft(), time.monotonic())
        return self._next_frame("frame", self._read_ms)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._session:
                try:  # best effort: a dead camera must not delay the close
                    sock.settimeout(0.5)
                    self._cseq += 1
                    sock.sendall(request("TEARDOWN", self._url, self._cseq, self._teardown()))
                except OSError:
                    pass
            sock.close()
        self._decoder.close()

    def _teardown(self) -> dict[str, str]:
        headers = {"Session": self._session}
        if self._auth is not None:
            headers.update(self._auth.header("TEARDOWN", self._url))
        return headers


def _why(exc: BaseException, timeout_ms: int) -> str:
    if isinstance(exc, TimeoutError):
        return f"nothing for {timeout_ms / 1000:.1f} s (camera or network down)"
    if isinstance(exc, EOFError):
        return "the camera closed the connection"
    return f"{type(exc).__name__}: {exc}"
