"""What every frame source yields (:class:`Frame`) and the interface it offers (:class:`Source`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np

STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp", "rtmp")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000


@dataclass
class Frame:
    """One captured frame: HxWx3 uint8 pixels, their colour order, index and capture time."""

    image: np.ndarray
    color: str
    index: int
    captured: float  # time.monotonic() when the read returned
    capture_ms: float  # time the read itself took


def redact(uri: str) -> str:
    """The URI without ``user:password@``: what messages, events and logs may show."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Source(Protocol):
    """Something that yields frames; ``read`` returns None at a clean end of stream."""

    uri: str
    live: bool

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...
