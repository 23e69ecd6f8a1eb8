"""Download a bundle over HTTP with Range requests, resumable across reboots, chunk-verified.

The bundle layout is fully determined by its signed manifest (FORMAT.md: canonical ustar), so
after the head (manifest + signature, verified with :func:`open_bundle` like any install) every
later byte belongs to a known unit: a canonical member header, a wire chunk with its signed
sha256, zero padding, or the end marker. Each unit is checked **before** it is appended to
``DIR/<id>.bundle.part`` (fsync), then the journal ``DIR/fetch-v1.json`` records the verified
length (atomic write). After an interruption (connection reset, process kill, power cut) the
part file is cut back to the journal's length and the download resumes with
``Range: bytes=N-``: at most the one unit in flight (and the small head, which is
re-checked on every run so that a new release at the same URL is noticed) is fetched twice.

Nothing unauthenticated sizes a buffer: the first tar header is checked (canonical, named
``manifest.json``, at most ``Limits.max_manifest_size``) before the manifest is asked for, and
every later read is a unit the signed manifest implies. With ``expected`` (the length and
sha256 a TUF channel signed for the file) the head must fit that length, the manifest's total
must equal it before any payload byte is asked for, and the whole-file sha256 is computed
while streaming and checked before the file is kept. A refused download (anything but an
interruption) removes its part file and journal: nothing refused stays in ``DIR``.

A bandwidth cap (bytes/s) and an allowed daily window (``HH:MM-HH:MM`` on the device clock,
UTC) are honoured between reads; outside the window :class:`OutsideWindowError` stops the
download with the journal kept. The finished file is an ordinary bundle: ``appliance install``
verifies it again, exactly as from a USB stick.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from appliance.bundle import Policy, open_bundle, tarstream
from appliance.bundle.errors import BundleError, ChunkDigestError
from appliance.bundle.manifest import MANIFEST_NAME, Limits, Manifest
from appliance.fsutil import atomic_write_bytes, fsync_dir
from appliance.ota.errors import OtaError, SourceError

log = logging.getLogger(__name__)
JOURNAL = "fetch-v1.json"
TIMEOUT_S = 60
READ = 64 << 10


class FetchError(OtaError):
    """The download failed in a way resuming cannot fix (bad server, bad bytes, bad journal)."""


class TargetMismatchError(FetchError):
    """The file is not the one the update channel signed for (length or sha256)."""


class OutsideWindowError(OtaError):
    """Now is outside the allowed download window; the journal is kept for later."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class Journal(msgspec.Struct, forbid_unknown_fields=True):
    """What survives a reboot: which bundle, and how many bytes of it are verified on disk."""

    url: str
    manifest_sha256: str
    total: int
    verified: int
    complete: bool = False


@dataclass(frozen=True)
class Expected:
    """What the update channel (TUF targets metadata) signed for the file: length and sha256."""

    length: int
    sha256: str


@dataclass(frozen=True)
class Unit:
    """A verifiable piece of the bundle after its head."""

    offset: int
    size: int
    sha256: str | None = None  # a wire chunk
    fixed: bytes | None = None  # a header, padding or the end marker


def layout(manifest: Manifest, head_len: int) -> list[Unit]:
    """Every unit after the head, in file order (the bundle is canonical: fully determined)."""
    units: list[Unit] = []
    pos = head_len
    for p in manifest.payloads:
        units.append(Unit(pos, 512, fixed=tarstream.build_header(p.name, p.size)))
        pos += 512
        for c in p.chunks:
            units.append(Unit(pos, c.size, sha256=c.sha256))
            pos += c.size
        pad = tarstream.padding(p.size)
        if pad:
            units.append(Unit(pos, pad, fixed=bytes(pad)))
            pos += pad
    units.append(Unit(pos, len(tarstream.END_OF_ARCHIVE), fixed=tarstream.END_OF_ARCHIVE))
    return units


@dataclass(frozen=True)
class Window:
    """An allowed daily time window in UTC; may wrap midnight (22:00-05:00)."""

    start: int  # minutes after midnight
    end: int

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse ``HH:MM-HH:MM``."""
        try:
            a, b = text.split("-")
            return cls(_minutes(a), _minutes(b))
        except ValueError:
            raise FetchError(f"window {text!r}: use HH:MM-HH:MM (UTC), e.g. 01:00-05:30") from None

    def allows(self, now: float) -> bool:
        """Whether Unix time ``now`` is inside the window."""
        t = dt.datetime.fromtimestamp(now, dt.UTC)
        m = t.hour * 60 + t.minute
        if self.start <= self.end:
            return self.start <= m < self.end
        return m >= self.start or m < self.end


def _minutes(hhmm: str) -> int:
    h, m = hhmm.strip().split(":")
    if not (0 <= int(h) < 24 and 0 <= int(m) < 60):
        raise ValueError(hhmm)
    return int(h) * 60 + int(m)


class Throttle:
    """Sleeps so the long-run rate stays at or under ``rate`` bytes per second."""

    def __init__(self, rate: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.start = clock()
        self.done = 0

    def account(self, n: int) -> None:
        """Record ``n`` bytes received and sleep if ahead of the cap."""
        self.done += n
        if self.rate is None:
            return
        ahead = self.done / self.rate - (self.clock() - self.start)
        if ahead > 0:
            time.sleep(ahead)


Opener = Callable[[str, int, int | None], BinaryIO]


def http_range(url: str, start: int, end: int | None, timeout: float | None = None) -> BinaryIO:
    """A response body for bytes ``start``..``end`` (inclusive; None: to the end).

    ``timeout``: seconds a connect or a read may stall (default ``TIMEOUT_S``).
    """
    want = f"bytes={start}-{'' if end is None else end}"
    req = urllib.request.Request(url, headers={"Range": want})  # noqa: S310 - http(s) only
    try:
        resp = urllib.request.urlopen(req, timeout=timeout or TIMEOUT_S)  # noqa: S310
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"cannot download {url} ({want}): {exc}") from exc
    if resp.status == 206:
        got = resp.headers.get("Content-Range", "")
        if not got.startswith(f"bytes {start}-"):
            resp.close()
            raise FetchError(f"{url}: asked for {want}, server sent range {got!r}")
        return resp  # type: ignore[no-any-return]
    if resp.status == 200:  # no Range support: skip what we have
        log.warning("%s ignores Range requests; skipping %d bytes", url, start)
        skip = start
        while skip:
            block = resp.read(min(READ, skip))
            if not block:
                raise SourceError(f"{url}: body ends before byte {start}")
            skip -= len(block)
        return resp  # type: ignore[no-any-return]
    resp.close()
    raise FetchError(f"{url}: HTTP {resp.status} for {want}")


def _read_exact(body: BinaryIO, n: int, throttle: Throttle, where: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            block = body.read(min(READ, n - len(buf)))
        except OSError as exc:  # connection reset, timeout
            raise SourceError(f"download interrupted in {where}: {exc}") from exc
        if not block:
            raise SourceError(f"download interrupted in {where}: connection closed")
        buf += block
        throttle.account(len(block))
    return bytes(buf)


def _head(
    url: str, opener: Opener, throttle: Throttle, limits: Limits, length: int | None
) -> bytes:
    """manifest.json + manifest.sig as bytes (two requests: the header tells the length).

    The first header is checked like the reader checks it (canonical ustar, name
    ``manifest.json``, size within ``limits.max_manifest_size``) before the second request
    asks for that many bytes: nobody who can answer the request (a mirror, a man in the
    middle on plain HTTP) can make the device buffer more than the limit.
    """
    with opener(url, 0, tarstream.BLOCK - 1) as body:
        first = _read_exact(body, tarstream.BLOCK, throttle, "the first header")
    header = tarstream.read_header(
        tarstream.StreamReader(io.BytesIO(first), url), MANIFEST_NAME, limits.max_manifest_size
    )
    if header is None or header.name != MANIFEST_NAME:
        raise FetchError(f"{url}: not a bundle (its first member is not {MANIFEST_NAME})")
    head_len = tarstream.BLOCK + header.size + tarstream.padding(header.size) + 1024
    if length is not None and head_len > length:
        raise FetchError(
            f"{url}: its manifest alone ({head_len} bytes) is longer than the {length} bytes "
            "the update channel signed for this file; refused"
        )
    with opener(url, 0, head_len - 1) as body:
        return _read_exact(body, head_len, throttle, "the manifest")


class Fetcher:
    """Downloads one URL into ``directory`` with a journal; see the module docstring."""

    def __init__(
        self,
        url: str,
        directory: Path,
        policy: Policy,
        *,
        rate: int | None = None,
        window: Window | None = None,
        opener: Opener = http_range,
        now: Callable[[], float] = time.time,
        expected: Expected | None = None,
    ) -> None:
        self.url = url
        self.expected = expected
        self.dir = Path(directory)
        self.policy = policy
        self.window = window
        self.opener = opener
        self.now = now
        self.throttle = Throttle(rate)
        self._parts: list[Path] = []  # part files this run created or resumed

    @property
    def fetched(self) -> int:
        """Bytes received from the network by this Fetcher, partial units included."""
        return self.throttle.done

    @property
    def journal_path(self) -> Path:
        """Where the journal lives (on the data partition)."""
        return self.dir / JOURNAL

    def _check_window(self) -> None:
        if self.window is not None and not self.window.allows(self.now()):
            raise OutsideWindowError(
                f"outside the download window; {self.journal_path} keeps the progress: run "
                "again inside the window"
            )

    def _load_journal(self) -> Journal | None:
        try:
            return msgspec.json.decode(self.journal_path.read_bytes(), type=Journal)
        except FileNotFoundError:
            return None
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("%s is damaged; starting the download again", self.journal_path)
            return None

    def _save(self, journal: Journal) -> None:
        atomic_write_bytes(self.journal_path, msgspec.json.encode(journal))

    def part_path(self, manifest_sha: str) -> Path:
        """The partial bundle file for one manifest."""
        return self.dir / f"{manifest_sha[:16]}.bundle.part"

    def run(self) -> Path:
        """Download (or resume) and return the finished bundle's path.

        A refusal (a head that is not a bundle or fails its signature or policy, a chunk that
        fails its digest, a file that is not the channel's target) removes this download's
        part file and journal: nothing refused stays in the directory. An interruption
        (:class:`SourceError`, :class:`OutsideWindowError`) keeps them for the next run.
        """
        self._check_window()
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        except (FetchError, BundleError):
            self._discard()
            raise

    def _discard(self) -> None:
        journal = self._load_journal()
        if journal is not None:
            self.part_path(journal.manifest_sha256).unlink(missing_ok=True)
            if not journal.complete:
                self.journal_path.unlink(missing_ok=True)
        for part in self._parts:
            part.unlink(missing_ok=True)
        fsync_dir(self.dir)

    def _run(self) -> Path:
        journal = self._load_journal()
        # The head (manifest + signature, ~160 bytes per chunk) is fetched again on every run:
        # a new release published at the same URL must not resume the old bundle's bytes.
        length = self.expected.length if self.expected is not None else None
        head = _head(self.url, self.opener, self.throttle, self.policy.limits, length)
        verified = open_bundle(io.BytesIO(head), self.policy, self.url)  # signature + policy
        digest = hashlib.sha256(verified.manifest_bytes).hexdigest()
        units = layout(verified.manifest, len(head))
        total = units[-1].offset + units[-1].size
        if length is not None and total != length:
            raise TargetMismatchError(
                f"{self.url}: the signed bundle is {total} bytes, the update channel signed "
                f"{length} bytes for this file; refused before its payload was fetched"
            )
        part = self.part_path(digest)
        final = part.with_suffix("")
        done = journal is not None and journal.complete and journal.manifest_sha256 == digest
        if done and final.exists():
            self._check_expected(final, None)
            return final
        if journal is not None and (journal.manifest_sha256 != digest or not part.exists()):
            # Another bundle now (a newer release): its partial download is useless.
            self.part_path(journal.manifest_sha256).unlink(missing_ok=True)
            journal = None
        self._parts.append(part)
        if journal is not None and journal.url != self.url:
            journal.url = self.url  # the same signed bundle from a mirror: resume
            self._save(journal)
        if journal is None:
            with open(part, "wb") as f:
                f.write(head)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.dir)
            journal = Journal(self.url, digest, total, len(head))
            self._save(journal)
        whole = self._continue(journal, units, part)
        self._check_expected(part, whole)
        os.replace(part, final)
        fsync_dir(self.dir)
        journal.complete = True
        self._save(journal)
        return final

    def _check_expected(self, path: Path, digest: str | None) -> None:
        """Refuse a file whose sha256 is not the channel's (before it is called finished)."""
        if self.expected is None:
            return
        if digest is None:
            digest = _file_sha256(path)
        if digest != self.expected.sha256:
            path.unlink(missing_ok=True)
            raise TargetMismatchError(
                f"{self.url}: the downloaded file's sha256 {digest[:16]}... is not the "
                f"{self.expected.sha256[:16]}... the update channel signed; removed (the file "
                "on the server changed: poll again)"
            )

    def _continue(self, journal: Journal, units: list[Unit], part: Path) -> str | None:
        """Fetch the units after ``journal.verified``; the whole file's sha256 if asked for."""
        pending = [u for u in units if u.offset >= journal.verified]
        if pending and pending[0].offset != journal.verified:
            raise FetchError(f"{self.journal_path}: verified length is not a unit boundary")
        whole = hashlib.sha256() if self.expected is not None else None
        with open(part, "r+b") as out:
            out.truncate(journal.verified)  # drop a unit that was written but not journalled
            if whole is not None:  # what earlier runs kept: read back once, O(1) memory
                while block := out.read(READ):
                    whole.update(block)
            out.seek(journal.verified)
            if pending:
                # Ask for exactly the bytes the signed manifest implies (and, with a channel,
                # that the channel signed): nothing past them is read from the body.
                end = pending[-1].offset + pending[-1].size - 1
                with self.opener(self.url, journal.verified, end) as body:
                    for unit in pending:
                        self._check_window()
                        data = _read_exact(body, unit.size, self.throttle, f"byte {unit.offset}")
                        _check_unit(unit, data, self.url)
                        if whole is not None:
                            whole.update(data)
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                        journal.verified = unit.offset + unit.size
                        self._save(journal)
        return whole.hexdigest() if whole is not None else None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(READ):
            digest.update(block)
    return digest.hexdigest()


def _check_unit(unit: Unit, data: bytes, url: str) -> None:
    if unit.fixed is not None and data != unit.fixed:
        raise FetchError(
            f"{url}: bytes at {unit.offset} are not the canonical header/padding the signed "
            "manifest implies; the file on the server changed or is damaged"
        )
    if unit.sha256 is not None and hashlib.sha256(data).hexdigest() != unit.sha256:
        raise ChunkDigestError(
            f"{url}: chunk at byte {unit.offset} does not match its signed sha256; not kept "
            "(the file on the server changed or the transfer was corrupted)"
        )


def fetch(
    url: str,
    directory: Path,
    policy: Policy,
    *,
    rate: int | None = None,
    window: Window | None = None,
    retries: int = 0,
    opener: Opener = http_range,
    expected: Expected | None = None,
) -> Path:
    """Download ``url`` into ``directory`` (resuming); retry network errors ``retries`` times.

    ``expected``: the length and sha256 an update channel signed for the file, enforced while
    streaming (the head and the manifest's total first, the digest before the file is kept).
    """
    attempt = 0
    while True:
        try:
            return Fetcher(
                url, directory, policy, rate=rate, window=window, opener=opener,
                expected=expected,
            ).run()  # fmt: skip
        except SourceError:
            if attempt >= retries:
                raise
            attempt += 1
            time.sleep(min(30, 2**attempt))
