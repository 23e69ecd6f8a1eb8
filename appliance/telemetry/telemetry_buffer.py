"""A bounded FIFO of records on the data partition: store-and-forward while the uplink is down.

Layout of the buffer directory (format 1)::

    seg-000000000001.log   records, one per line, appended; a new segment every segment_bytes
    seg-000000000002.log
    state.json             {"format": 1, "segment": n, "offset": o, "dropped": d}

``state.json`` is the read cursor (every record before byte ``o`` of segment ``n`` was
delivered) plus the number of records dropped because the buffer was full; it is replaced
atomically (temp file, fsync, rename). Segments are appended with O_APPEND and fsynced at most
once per ``fsync_every`` seconds: records are telemetry, not state, and a power cut may lose the
last second of them.

Bounds: when the segments total more than ``max_bytes``, whole oldest segments are deleted and
their undelivered records are added to ``dropped`` (oldest first, as a store-and-forward buffer
should: the newest data is what an operator needs after an outage).

Recovery: a segment whose last line is torn (power cut mid-write) is cut back to its last
complete line when the buffer is opened, so the next append does not glue onto the fragment.
A missing or unreadable ``state.json`` restarts delivery at the oldest segment (at-least-once:
duplicates are possible, loss is not).

Not thread-safe: one owner thread appends, reads and acknowledges.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from appliance.fsutil import atomic_write_bytes, fsync_dir
from appliance.telemetry.errors import TelemetryError

log = logging.getLogger(__name__)
FORMAT = 1
_SEGMENT = re.compile(r"seg-(\d{12})\.log")
_READ_CHUNK = 64 << 10


class TelemetryBufferError(TelemetryError):
    """The telemetry buffer cannot be used (directory not writable, record not one line)."""


class _State(msgspec.Struct, forbid_unknown_fields=False):
    format: int
    segment: int
    offset: int
    dropped: int = 0


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in the buffer: byte ``offset`` of segment number ``segment``."""

    segment: int
    offset: int


class TelemetryBuffer:
    """Append records (bytes without a newline); read them back in order; acknowledge delivery."""

    def __init__(
        self,
        directory: Path | str,
        *,
        max_bytes: int = 64 << 20,
        segment_bytes: int = 1 << 20,
        fsync_every: float = 1.0,
    ) -> None:
        if max_bytes < segment_bytes or segment_bytes < 1:
            raise TelemetryBufferError(
                f"{directory}: max_bytes ({max_bytes}) must be >= segment_bytes ({segment_bytes})"
            )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_every = fsync_every
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TelemetryBufferError(
                f"{self.directory}: cannot create ({exc.strerror})"
            ) from None
        self._sizes: dict[int, int] = {}  # segment number -> bytes, oldest first
        for path in sorted(self.directory.iterdir()):
            m = _SEGMENT.fullmatch(path.name)
            if m:
                self._sizes[int(m.group(1))] = path.stat().st_size
        if self._sizes:
            self._repair(max(self._sizes))
        self.dropped = 0
        self._cursor = self._load_state()
        self._fd = -1
        self._write_segment = max(self._sizes) if self._sizes else self._cursor.segment
        self._last_sync = time.monotonic()
        self.pending = self._count_pending()

    # --- opening -------------------------------------------------------------------------

    def _path(self, segment: int) -> Path:
        return self.directory / f"seg-{segment:012d}.log"

    def _repair(self, segment: int) -> None:
        """Cut a torn last line (power cut mid-append) back to the last complete record."""
        path = self._path(segment)
        data = path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep != len(data):
            log.warning("%s: cutting a torn last record (%d bytes)", path, len(data) - keep)
            os.truncate(path, keep)
            self._sizes[segment] = keep

    def _load_state(self) -> Cursor:
        oldest = Cursor(min(self._sizes) if self._sizes else 1, 0)
        path = self.directory / "state.json"
        try:
            state = msgspec.json.decode(path.read_bytes(), type=_State)
        except FileNotFoundError:
            return oldest
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("%s: unreadable (%s); delivering again from the oldest record", path, exc)
            return oldest
        if state.format != FORMAT:
            log.warning(
                "%s: format %s, not %s; starting from the oldest", path, state.format, FORMAT
            )
            return oldest
        self.dropped = state.dropped
        cursor = Cursor(state.segment, state.offset)
        if cursor.segment not in self._sizes:  # delivered and deleted, or dropped when full
            later = [s for s in self._sizes if s > cursor.segment]
            return Cursor(min(later) if later else cursor.segment, 0)
        return Cursor(cursor.segment, min(cursor.offset, self._sizes[cursor.segment]))

    def _count_pending(self) -> int:
        count = 0
        for segment in self._sizes:
            if segment < self._cursor.segment:
                continue
            start = self._cursor.offset if segment == self._cursor.segment else 0
            with self._path(segment).open("rb") as f:
                f.seek(start)
                count += f.read().count(b"\n")
        return count

    # --- writing -------------------------------------------------------------------------

    def append(self, records: list[bytes]) -> None:
        """Append ``records`` (each one line of bytes); drop the oldest if the buffer is full."""
        for r in records:
            if b"\n" in r:
                raise TelemetryBufferError(f"{self.directory}: a record must be one line")
        chunk: list[bytes] = []
        used = self._sizes.get(self._write_segment, 0)
        for r in records:
            if used and used + len(r) + 1 > self.segment_bytes:
                self._write(chunk)  # fill this segment, then start the next one
                self._roll()
                chunk, used = [], 0
            chunk.append(r)
            used += len(r) + 1
        self._write(chunk)

    def _write(self, chunk: list[bytes]) -> None:
        if chunk:
            if self._fd < 0:
                self._fd = os.open(
                    self._path(self._write_segment), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
                )
                self._sizes.setdefault(self._write_segment, 0)
            data = b"\n".join(chunk) + b"\n"
            os.write(self._fd, data)
            self._sizes[self._write_segment] += len(data)
            self.pending += len(chunk)
        if time.monotonic() - self._last_sync >= self.fsync_every:
            self.sync()
        self._enforce_bound()

    def _roll(self) -> None:
        self.sync()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._write_segment += 1

    def sync(self) -> None:
        """fsync the segment being appended (called by itself once per ``fsync_every``)."""
        if self._fd >= 0:
            os.fsync(self._fd)
        self._last_sync = time.monotonic()

    def _enforce_bound(self) -> None:
        while sum(self._sizes.values()) > self.max_bytes and len(self._sizes) > 1:
            oldest = min(self._sizes)
            lost = 0
            if oldest >= self._cursor.segment:  # undelivered records in it
                start = self._cursor.offset if oldest == self._cursor.segment else 0
                with self._path(oldest).open("rb") as f:
                    f.seek(start)
                    lost = f.read().count(b"\n")
            self._path(oldest).unlink()
            del self._sizes[oldest]
            self.dropped += lost
            self.pending -= lost
            if self._cursor.segment <= oldest:
                self._cursor = Cursor(min(self._sizes), 0)
            log.warning(
                "%s: full, dropped %d oldest records (%d in all)",
                self.directory,
                lost,
                self.dropped,
            )
            self._save_state()

    # --- reading -------------------------------------------------------------------------

    def peek(self, max_records: int) -> tuple[list[bytes], Cursor]:
        """Up to ``max_records`` undelivered records, oldest first, and the cursor after them."""
        out: list[bytes] = []
        cursor = self._cursor
        for segment in sorted(s for s in self._sizes if s >= cursor.segment):
            start = cursor.offset if segment == cursor.segment else 0
            end = self._sizes[segment]
            if start >= end:
                cursor = Cursor(segment, end)
                continue
            pos = start  # end of the last record taken; read in chunks (segments are 1 MiB)
            with self._path(segment).open("rb") as f:
                f.seek(start)
                tail, read_to = b"", start
                while len(out) < max_records and read_to < end:
                    chunk = f.read(min(_READ_CHUNK, end - read_to))
                    if not chunk:
                        break
                    read_to += len(chunk)
                    lines = (tail + chunk).split(b"\n")
                    tail = lines.pop()  # after the last newline: the start of the next record
                    for line in lines[: max_records - len(out)]:
                        out.append(line)
                        pos += len(line) + 1
            cursor = Cursor(segment, pos)
            if len(out) >= max_records:
                break
        return out, cursor

    def ack(self, cursor: Cursor, count: int) -> None:
        """Everything before ``cursor`` (``count`` records since the last ack) was delivered."""
        if cursor <= self._cursor:  # e.g. the segment was dropped meanwhile
            return
        self._cursor = cursor
        self.pending = max(0, self.pending - count)  # count may include dropped ones
        removed = False
        for segment in [s for s in self._sizes if s < cursor.segment]:
            self._path(segment).unlink()
            del self._sizes[segment]
            removed = True
        if self.empty() and cursor.segment == self._write_segment:
            # Everything delivered: start a fresh segment so the old one can go.
            self._roll()
            self._path(cursor.segment).unlink(missing_ok=True)
            self._sizes.pop(cursor.segment, None)
            self._cursor = Cursor(self._write_segment, 0)
            removed = True
        self._save_state()
        if removed:
            fsync_dir(self.directory)

    def _save_state(self) -> None:
        state = _State(FORMAT, self._cursor.segment, self._cursor.offset, self.dropped)
        atomic_write_bytes(self.directory / "state.json", msgspec.json.encode(state))

    def empty(self) -> bool:
        """True when every record appended was acknowledged (or dropped)."""
        return all(
            size <= (self._cursor.offset if segment == self._cursor.segment else 0)
            for segment, size in self._sizes.items()
            if segment >= self._cursor.segment
        )

    def __len__(self) -> int:
        """Undelivered records (exact after open; kept up to date by append, ack and drops)."""
        return self.pending

    def close(self) -> None:
        """fsync and close the segment being appended."""
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
