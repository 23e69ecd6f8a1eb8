"""Pairing codes, bearer tokens (stored hashed on data) and the failed-attempt limiter.

- A **pairing code** is 8 digits from :mod:`secrets`, valid for :data:`CODE_TTL_S` and used at
  most once. Whoever shows it (the TUI's Pair screen, ``appliance api pair-code``, the server
  at start while no laptop is paired) prints it on the console and in the journal and writes
  only its SHA-256 and expiry to ``<data>/edgekiln/api/pair-code.json``; the server, a separate
  process, compares against that and deletes the file on success.
- A **token** is 32 random bytes (urlsafe base64) handed to the laptop once. Only its SHA-256
  is kept, in ``tokens-v1.json`` (the format version is in the name, docs/decisions.md §10).
  Every comparison is :func:`hmac.compare_digest` over the full digest list.
- **Failures** (wrong code, wrong or missing token) are counted per client address; after
  :data:`MAX_FAILURES` inside :data:`WINDOW_S` the address gets 429 for :data:`LOCKOUT_S`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import secrets
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from appliance.api.errors import TokenStoreError
from appliance.fsutil import atomic_write_bytes, read_optional

log = logging.getLogger(__name__)

CODE_DIGITS = 8
CODE_TTL_S = 300
TOKENS_NAME = "tokens-v1.json"
CODE_NAME = "pair-code.json"
MAX_FAILURES = 5
WINDOW_S = 60.0
LOCKOUT_S = 60.0
#: where a new pairing code is shown besides the journal: the kernel's console (the serial
#: port on the QEMU test profile and on most boxes), unless that is the TUI's own screen
CONSOLE = Path("/dev/console")
SYSFS_TTY = Path("/sys/class/tty")
#: how long a line waits for room in a full console buffer (a busy serial port at boot)
CONSOLE_WAIT_S = 5.0


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class TokenRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One paired laptop: a name, when it paired, the SHA-256 of its token."""

    name: str
    created: float
    sha256: str


class TokenFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``tokens-v1.json``."""

    format: int = 1
    tokens: tuple[TokenRecord, ...] = ()


class PairCode(msgspec.Struct, frozen=True):
    """``pair-code.json``: the hash of the one code that may be exchanged, and until when."""

    sha256: str
    expires: float


class TokenStore:
    """Paired laptops' token hashes in ``<api_dir>/tokens-v1.json``."""

    def __init__(self, api_dir: Path) -> None:
        self.api_dir = Path(api_dir)
        self.path = self.api_dir / TOKENS_NAME
        self._lock = threading.Lock()

    def load(self) -> TokenFile:
        """The stored tokens; a missing file is none paired, a damaged one an error."""
        data = read_optional(self.path, TokenStoreError)
        if data is None:
            return TokenFile()
        try:
            return msgspec.json.decode(data, type=TokenFile)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TokenStoreError(
                f"{self.path}: {exc}; remove it and pair the laptops again"
            ) from None

    def _save(self, tokens: tuple[TokenRecord, ...]) -> None:
        self.api_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, msgspec.json.encode(TokenFile(tokens=tokens)), mode=0o600)

    def issue(self, name: str) -> str:
        """A new token for ``name`` (returned once; only its hash is stored)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            current = self.load().tokens
            self._save((*current, TokenRecord(name[:64], round(time.time(), 3), _sha256(token))))
        return token

    def check(self, token: str) -> TokenRecord | None:
        """The record whose hash equals ``token``'s (constant time over all records)."""
        digest = _sha256(token)
        found = None
        for record in self.load().tokens:
            if hmac.compare_digest(record.sha256, digest):
                found = record
        return found

    def revoke(self, name_or_prefix: str) -> int:
        """Remove tokens whose name equals, or whose hash starts with, the argument; how many."""
        with self._lock:
            current = self.load().tokens
            keep = tuple(
                r
                for r in current
                if r.name != name_or_prefix
                and not (len(name_or_prefix) >= 8 and r.sha256.startswith(name_or_prefix))
            )
            if len(keep) != len(current):
                self._save(keep)
        return len(current) - len(keep)


def new_pair_code(
    api_dir: Path,
    ttl_s: float = CODE_TTL_S,
    console: Path | None = None,
    sysfs: Path = SYSFS_TTY,
) -> str:
    """Make a one-time pairing code, store its hash, log it (the journal) and write it to
    ``console`` (the device's ``/dev/console``; None: the log only); return it."""
    code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
    api_dir.mkdir(parents=True, exist_ok=True)
    record = PairCode(_sha256(code), round(time.time() + ttl_s, 3))
    atomic_write_bytes(api_dir / CODE_NAME, msgspec.json.encode(record), mode=0o600)
    line = f"LAN pairing code: {code} (valid {int(ttl_s)} s, once)"
    log.warning("%s", line)
    if console is not None:
        show_on_console(f"edgekiln: {line}", console, sysfs)
    return code


def _own_terminal_is_the_console(sysfs: Path) -> bool:
    """Whether stdin is the terminal ``/dev/console`` writes to (the TUI on the console's
    own VT already shows the code; a write there would scribble over its screen)."""
    try:
        own = os.ttyname(0)
        active = (sysfs / "console" / "active").read_text().split()
        target = active[-1] if active else ""
        if target == "tty0":  # the foreground VT
            target = (sysfs / "tty0" / "active").read_text().strip()
    except OSError:
        return False
    return bool(target) and own == f"/dev/{target}"


def show_on_console(
    line: str, console: Path = CONSOLE, sysfs: Path = SYSFS_TTY, wait_s: float = CONSOLE_WAIT_S
) -> bool:
    """Write one line to the system console (the serial port or screen the kernel prints to),
    best effort: a device without a console, or a TUI drawn on it, gets the journal only.

    The console is opened non-blocking (a stuck serial line must not hang the caller), so a
    write may find its buffer full (boot messages going out at 115200 baud) or take only part
    of the line: it waits up to ``wait_s`` for room and writes the rest."""
    if _own_terminal_is_the_console(sysfs):
        return False
    try:
        fd = os.open(console, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_APPEND)
    except OSError as exc:  # no console on this device: the journal has it
        log.info("not shown on %s: %s", console, exc.strerror)
        return False
    data = memoryview(f"\r\n{line}\r\n".encode())
    deadline = time.monotonic() + wait_s
    try:
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("not shown on %s: its output stayed full %.0f s", console, wait_s)
                    return False
                select.select([], [fd], [], min(left, 0.2))
    except OSError as exc:
        log.warning("not shown on %s: %s", console, exc.strerror)
        return False
    finally:
        os.close(fd)
    return True


def code_pending(api_dir: Path) -> bool:
    """Whether an unused, unexpired pairing code exists (shown somewhere already)."""
    try:
        record = msgspec.json.decode((api_dir / CODE_NAME).read_bytes(), type=PairCode)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return False
    return record.expires > time.time()


def take_pair_code(api_dir: Path, code: str) -> bool:
    """True once if ``code`` is the current, unexpired code (the file is then removed)."""
    path = api_dir / CODE_NAME
    try:
        record = msgspec.json.decode(path.read_bytes(), type=PairCode)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return False
    if record.expires < time.time():
        path.unlink(missing_ok=True)
        return False
    if not hmac.compare_digest(record.sha256, _sha256(code)):
        return False
    try:
        path.unlink()  # one use: a concurrent exchange of the same code loses here
    except FileNotFoundError:
        return False
    return True


def append_event(events_path: Path, kind: str, **details: Any) -> None:
    """One JSON line in the device's events log (appended, fsynced)."""
    line = json.dumps({"ts": round(time.time(), 3), "kind": kind, **details}, default=str)
    try:
        events_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("cannot log event %s to %s: %s", kind, events_path, exc)


@dataclasses.dataclass
class FailureLimiter:
    """Counts failed attempts per client address; locks an address out after too many."""

    max_failures: int = MAX_FAILURES
    window_s: float = WINDOW_S
    lockout_s: float = LOCKOUT_S
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    _locked_until: dict[str, float] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def locked(self, client: str) -> bool:
        """Whether ``client`` must get 429 now."""
        with self._lock:
            return self._locked_until.get(client, 0.0) > self.clock()

    def fail(self, client: str) -> bool:
        """Count one failure; True if this one locked the client out."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < self.window_s]
            recent.append(now)
            self._failures[client] = recent
            if len(recent) >= self.max_failures:
                self._locked_until[client] = now + self.lockout_s
                self._failures[client] = []
                return True
            return False
