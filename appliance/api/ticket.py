"""Upload tickets: a bundle authorised over TLS, then streamed in the clear on the same port.

Why (docs/decisions.md §33): Python's ``ssl`` decrypts one 16 KiB record per call and costs
the device about as much CPU as the whole verify/write/read-back install; the bundle needs no
secrecy from the LAN (USB sticks and HTTP channels carry it in the clear too) and carries its
own integrity (Ed25519 signature over the manifest, per-chunk digests checked before each
write). What TLS still has to give, the ticket gives:

- **who**: only a paired laptop gets a ticket (bearer token, over the pinned TLS connection);
- **which bundle**: the ticket names the SHA-256 and length of the bundle's signed head
  (``manifest.json`` + ``manifest.sig``, as tar members); :class:`PinnedHead` refuses to hand the
  installer any byte after the head unless the head received is exactly that one, so a
  different (even validly signed) bundle slipped in on the way is refused before any payload
  byte is read, let alone written; a payload changed on the way fails its chunk digest before
  that chunk is written, as from a corrupt file;
- **once, from there, soon**: a ticket is 256 random bits, stored only as a SHA-256, taken
  (deleted) at its first presentation whether or not it matches the rest, valid only from the
  address that asked for it and for :data:`TICKET_TTL_S` seconds; a wrong ticket counts as a
  failed credential for the rate limiter like a wrong token.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from appliance.api.errors import ApiError

TICKET_TTL_S = 30.0
MIN_HEAD = 4 * 512  # two tar headers, the manifest and the signature, each at least a block
MAX_HEAD = 1 << 20
MAX_PENDING = 16


class TicketRefused(ApiError):
    """An upload ticket that is unknown, used, expired or presented from another address."""


class HeadMismatch(ApiError):
    """The bundle's head is not the one the ticket names: refused before any payload byte."""


@dataclasses.dataclass(frozen=True)
class Ticket:
    """What one ticket allows: one body of ``size`` bytes whose head hashes to ``head_sha256``."""

    peer: str
    size: int
    head_len: int
    head_sha256: str
    expires: float


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class TicketStore:
    """Pending tickets, in memory only (a restarted service forgets them: ask again)."""

    def __init__(
        self, ttl_s: float = TICKET_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s, self._clock = ttl_s, clock
        self._pending: dict[str, Ticket] = {}
        self._lock = threading.Lock()

    def issue(self, peer: str, size: int, head_len: int, head_sha256: str) -> str:
        """A new ticket for ``peer``; the oldest pending one goes when too many are pending."""
        ticket = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._pending = {k: t for k, t in self._pending.items() if t.expires > now}
            while len(self._pending) >= MAX_PENDING:
                del self._pending[next(iter(self._pending))]
            self._pending[_digest(ticket)] = Ticket(
                peer, size, head_len, head_sha256.lower(), now + self.ttl_s
            )
        return ticket

    def take(self, ticket: str, peer: str) -> Ticket:
        """The ticket's grant, removed from the store; :class:`TicketRefused` if not valid."""
        wanted = _digest(ticket)
        with self._lock:
            found = None
            for key in list(self._pending):
                if hmac.compare_digest(key, wanted):
                    found = self._pending.pop(key)
        if found is None:
            raise TicketRefused("upload ticket unknown or already used: ask for a new one")
        if self._clock() > found.expires:
            raise TicketRefused(f"upload ticket expired ({self.ttl_s:.0f} s): ask for a new one")
        if found.peer != peer:
            raise TicketRefused(
                f"upload ticket issued to {found.peer}, presented from {peer}: refused"
            )
        return found


def parse_request(body: dict[str, object], max_upload: int) -> tuple[int, int, str]:
    """(size, head_len, head_sha256) of a ticket request; ValueError names the bad field."""
    size, head_len, head = body.get("size"), body.get("head_len"), body.get("head_sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError("size must be the bundle's byte count")
    if size > max_upload:
        raise OverflowError(f"a bundle may be at most {max_upload} bytes here")
    if not isinstance(head_len, int) or isinstance(head_len, bool):
        raise ValueError("head_len must be an integer")
    if not MIN_HEAD <= head_len <= min(MAX_HEAD, size):
        raise ValueError(f"head_len must be between {MIN_HEAD} and {MAX_HEAD} and ≤ size")
    if (
        not isinstance(head, str)
        or len(head) != 64
        or any(c not in "0123456789abcdef" for c in head)
    ):
        raise ValueError("head_sha256 must be 64 lowercase hex digits")
    return size, head_len, head


class PinnedHead:
    """``stream`` whose first ``head_len`` bytes are read and checked before any is handed on.

    The installer sees nothing of a body whose head is not the ticket's: it is refused before
    the bundle is opened, so no slot or loader state is touched.
    """

    def __init__(self, stream: BinaryIO, head_len: int, head_sha256: str) -> None:
        self._stream, self._head_len, self._want = stream, head_len, head_sha256
        self._buffer: bytes | None = None
        self._at = 0

    def check(self) -> None:
        """Read the head and compare it with the ticket's; :class:`HeadMismatch` if it differs."""
        if self._buffer is not None:
            return
        parts, got = [], 0
        while got < self._head_len:
            part = self._stream.read(self._head_len - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        head = b"".join(parts)
        if not hmac.compare_digest(hashlib.sha256(head).hexdigest(), self._want):
            raise HeadMismatch(
                "the bundle's manifest and signature are not those the upload ticket names "
                "(changed on the way?): refused before the installer read any of it"
            )
        self._buffer = head

    def read(self, n: int = -1) -> bytes:
        self.check()
        assert self._buffer is not None
        if self._at < len(self._buffer):
            end = len(self._buffer) if n is None or n < 0 else min(len(self._buffer), self._at + n)
            data = self._buffer[self._at : end]
            self._at = end
            return data
        return self._stream.read(n)
