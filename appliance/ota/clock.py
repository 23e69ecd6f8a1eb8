"""The trusted clock (docs/decisions.md §6): a Unix time only when this boot's clock is trusted.

The clock is trusted once it was synchronised since boot: systemd-timesyncd creates
``/run/systemd/timesync/synchronized`` (on tmpfs: gone at the next boot) when it has set the
clock from a time server. The device also keeps the latest trusted time it saw on data
(``edgekiln/trusted-time``): a clock behind it is never trusted, whatever says it was synced.
Without a trusted time, expiry and key ``not_after`` are not enforced and the install says so;
offline installs rely on the signature and the anti-rollback floor, never on the clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from appliance.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

SYNCED_FLAG = Path("/run/systemd/timesync/synchronized")
LATEST_NAME = Path("edgekiln") / "trusted-time"
#: Rewrite the latest trusted time at most this often (seconds): data is flash.
RECORD_EVERY_S = 3600


def latest_trusted(data_dir: Path) -> int:
    """The latest trusted time recorded on data (0 if none or unreadable)."""
    try:
        text = (Path(data_dir) / LATEST_NAME).read_text().strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def trusted_now(
    data_dir: Path | None,
    synced_flag: Path = SYNCED_FLAG,
    clock: Callable[[], float] = time.time,
) -> int | None:
    """Now as a Unix time if the clock is trusted, else None (expiry cannot be checked)."""
    if not synced_flag.exists():
        return None
    now = int(clock())
    if data_dir is None:
        return now
    latest = latest_trusted(data_dir)
    if now < latest:
        log.warning("clock %d is behind the latest trusted time %d: not trusted", now, latest)
        return None
    if now - latest >= RECORD_EVERY_S:
        try:
            path = Path(data_dir) / LATEST_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, f"{now}\n".encode(), mode=0o644)
        except OSError as exc:  # a read-only data partition still lets the install go on
            log.warning("cannot record the trusted time: %s", exc)
    return now
