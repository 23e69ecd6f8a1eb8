"""RTSP 1.0 on the wire (RFC 2326): requests, bounded response parsing, auth and the SDP we need.

Everything a camera sends is untrusted: a response head is at most ``MAX_HEAD`` bytes and
``MAX_HEADERS`` lines, a body (the SDP) at most ``MAX_BODY`` bytes, and anything malformed is a
:class:`RtspProtocolError` (a SourceError) saying what was wrong. Authentication: HTTP Basic and
Digest (RFC 2617, MD5, with or without ``qop=auth``), answered once after a 401.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urljoin

from appliance.inference.errors import SourceError

MAX_HEAD = 16 << 10  # a response head (status line + headers)
MAX_HEADERS = 64
MAX_BODY = 64 << 10  # an SDP is a few hundred bytes; 64 KiB is generous


class RtspProtocolError(SourceError):
    """The server sent something that is not RTSP as we understand it."""


@dataclass
class Response:
    """An RTSP response: status, reason, headers (names lower-cased) and body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def content_length(self) -> int:
        raw = self.header("content-length", "0").strip()
        if not raw.isdigit() or int(raw) > MAX_BODY:
            raise RtspProtocolError(f"bad or oversized Content-Length {raw[:40]!r}")
        return int(raw)


def parse_head(head: bytes) -> Response:
    """Parse a response head (status line and headers, without the blank line ending it)."""
    if len(head) > MAX_HEAD:
        raise RtspProtocolError(f"a response head of more than {MAX_HEAD} bytes")
    lines = [line.rstrip("\r") for line in head.decode("iso-8859-1").split("\n")]
    match = re.fullmatch(r"RTSP/1\.\d (\d{3})(?: (.*))?", lines[0].strip())
    if match is None:
        raise RtspProtocolError(f"not an RTSP status line: {lines[0][:80]!r}")
    if len(lines) > MAX_HEADERS + 1:
        raise RtspProtocolError(f"a response with more than {MAX_HEADERS} header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise RtspProtocolError(f"bad response header line {line[:80]!r}")
        key = name.strip().lower()
        if key == "www-authenticate" and key in headers:
            headers[key] += "\n" + value.strip()  # several challenges: keep them all
        else:
            headers[key] = value.strip()
    return Response(int(match.group(1)), (match.group(2) or "").strip(), headers)


def request(method: str, url: str, cseq: int, headers: dict[str, str]) -> bytes:
    """One request, ready to send (no body: the methods we use carry none)."""
    lines = [f"{method} {url} RTSP/1.0", f"CSeq: {cseq}", "User-Agent: edgekiln"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(value: str) -> list[Challenge]:
    """Every challenge of the ``WWW-Authenticate`` header(s) (one per line, as parse_head keeps)."""
    out = []
    for line in value.split("\n"):
        scheme, _, rest = line.strip().partition(" ")
        if not scheme:
            continue
        params = {
            k.lower(): v if v else bare
            for k, v, bare in re.findall(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', rest)
        }
        out.append(Challenge(scheme.lower(), params))
    return out


class Authenticator:
    """The ``Authorization`` header for each request once a 401 has told us the scheme."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self._challenge: Challenge | None = None
        self._nc = 0

    def accept(self, challenges: list[Challenge]) -> bool:
        """Pick Digest (preferred) or Basic from a 401; False if neither is offered."""
        by_scheme = {c.scheme: c for c in challenges}
        chosen = by_scheme.get("digest") or by_scheme.get("basic")
        if chosen is None or (chosen.scheme == "digest" and "nonce" not in chosen.params):
            return False
        algorithm = chosen.params.get("algorithm", "MD5").upper()
        if chosen.scheme == "digest" and algorithm != "MD5":
            return False
        self._challenge = chosen
        return True

    @property
    def scheme(self) -> str:
        """``basic`` or ``digest`` once a challenge was accepted, else ``""``."""
        return self._challenge.scheme if self._challenge else ""

    def header(self, method: str, url: str) -> dict[str, str]:
        c = self._challenge
        if c is None:
            return {}
        if c.scheme == "basic":
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        realm, nonce = c.params.get("realm", ""), c.params["nonce"]
        ha1 = _md5(f"{self.user}:{realm}:{self.password}")
        ha2 = _md5(f"{method}:{url}")
        fields = [
            f'username="{self.user}"',
            f'realm="{realm}"',
            f'nonce="{nonce}"',
            f'uri="{url}"',
        ]
        if "auth" in [q.strip() for q in c.params.get("qop", "").split(",")]:
            self._nc += 1
            cnonce = os.urandom(8).hex()
            nc = f"{self._nc:08x}"
            digest = _md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        else:
            digest = _md5(f"{ha1}:{nonce}:{ha2}")
        fields.append(f'response="{digest}"')
        if "opaque" in c.params:
            fields.append(f'opaque="{c.params["opaque"]}"')
        return {"Authorization": "Digest " + ", ".join(fields)}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


@dataclass
class Track:
    """One ``m=video`` section of an SDP: payload type, codec, its control URL and fmtp."""

    payload_type: int
    encoding: str  # upper case, e.g. "H264", "JPEG" ("" if the SDP has no rtpmap for it)
    clock_rate: int
    control: str
    fmtp: dict[str, str]


def parse_sdp(text: str, base_url: str) -> list[Track]:
    """The video tracks of an SDP (only their first payload type), control URLs made absolute."""
    if len(text) > MAX_BODY:
        raise RtspProtocolError(f"an SDP of more than {MAX_BODY} bytes")
    session_control = base_url
    media: list[str] | None = None
    sections: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            media = [line]
            sections.append(media)
        elif media is not None:
            media.append(line)
        elif line.startswith("a=control:"):
            session_control = _control(base_url, line[10:].strip())
    return [t for t in (_video_track(sec, session_control) for sec in sections) if t is not None]


def _video_track(section: list[str], session_control: str) -> Track | None:
    """The Track of one media section if it is video (its first payload type), else None."""
    parts = section[0][2:].split()
    if len(parts) < 4 or parts[0] != "video" or not parts[3].isdigit():
        return None
    pt = int(parts[3])
    encoding, clock, control = ("JPEG" if pt == 26 else ""), 90000, session_control
    fmtp: dict[str, str] = {}
    for line in section[1:]:
        if line.startswith(f"a=rtpmap:{pt} "):
            name, _, rest = line.split(" ", 1)[1].partition("/")
            encoding = name.strip().upper()
            rate = rest.split("/")[0].strip()
            clock = int(rate) if rate.isdigit() else clock
        elif line.startswith(f"a=fmtp:{pt} "):
            for item in line.split(" ", 1)[1].split(";"):
                key, _, value = item.strip().partition("=")
                if key:
                    fmtp[key.strip().lower()] = value.strip()
        elif line.startswith("a=control:"):
            control = _control(session_control, line[10:].strip())
    return Track(pt, encoding, clock, control, fmtp)


def _control(base: str, control: str) -> str:
    """An ``a=control`` value made absolute (``*`` means the base itself)."""
    if control in ("", "*"):
        return base
    if control.startswith(("rtsp://", "rtsps://")):
        return control
    return urljoin(base if base.endswith("/") else base + "/", control)


def sprop_parameter_sets(fmtp: dict[str, str]) -> list[bytes]:
    """The SPS/PPS NAL units of ``sprop-parameter-sets`` (base64, comma-separated; bad: skipped)."""
    out = []
    for item in fmtp.get("sprop-parameter-sets", "").split(","):
        try:
            nal = base64.b64decode(item.strip(), validate=True)
        except ValueError:
            continue
        if nal:
            out.append(nal)
    return out


def session_id(value: str) -> tuple[str, float]:
    """``Session: id;timeout=60`` → (id, timeout in seconds; 60 when absent, RFC 2326's default)."""
    sid, _, params = value.partition(";")
    timeout = 60.0
    match = re.search(r"timeout\s*=\s*(\d+)", params)
    if match:
        timeout = max(1.0, float(match.group(1)))
    if not sid.strip() or len(sid) > 256:
        raise RtspProtocolError(f"bad Session header {value[:80]!r}")
    return sid.strip(), timeout
