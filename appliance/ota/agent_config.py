"""The update agent's settings: ``/etc/edgekiln/update.json`` in the slot (from the recipe).

The builder writes it from the recipe's ``[update]`` table, next to the channel's TUF root
(``/etc/edgekiln/tuf-root.json``); ``$EDGEKILN_UPDATE_CONFIG`` points elsewhere (tests, a
development machine). The download window is **local** time and may cross midnight.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Literal

import msgspec

from appliance.ota.errors import OtaError
from appliance.ota.fetch import FetchError, Window

UPDATE_CONFIG = Path("/etc/edgekiln/update.json")
TUF_ROOT = Path("/etc/edgekiln/tuf-root.json")
RebootPolicy = Literal["window", "now", "manual"]


class UpdateConfigError(OtaError):
    """update.json is missing a channel, unreadable or malformed."""


class UpdateConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the recipe's ``[update]`` table says (all sizes in bytes, times in seconds)."""

    channels: list[str] = msgspec.field(default_factory=list)
    tuf_root: str = str(TUF_ROOT)
    poll_interval_s: int = 6 * 3600
    poll_jitter_s: int = 1800
    window: str | None = None  # "HH:MM-HH:MM" local time; None: any time
    rate: int | None = None  # bytes per second
    metered: bool = False
    reboot: RebootPolicy = "window"
    max_bundle_bytes: int = 2 << 30


class LocalWindow(Window):
    """A :class:`~appliance.ota.fetch.Window` read on the device's local clock."""

    def allows(self, now: float) -> bool:
        """Whether Unix time ``now`` is inside the window, in local time."""
        t = dt.datetime.fromtimestamp(now)
        m = t.hour * 60 + t.minute
        if self.start <= self.end:
            return self.start <= m < self.end
        return m >= self.start or m < self.end

    def next_open(self, now: float) -> float:
        """The next Unix time (>= now) at which the window is open (minute resolution)."""
        if self.allows(now):
            return now
        t = dt.datetime.fromtimestamp(now).replace(second=0, microsecond=0)
        start = t.replace(hour=self.start // 60, minute=self.start % 60)
        if start.timestamp() <= now:
            start += dt.timedelta(days=1)
        return start.timestamp()


def parse_window(text: str | None) -> LocalWindow | None:
    """``HH:MM-HH:MM`` (local) or None."""
    if not text:
        return None
    try:
        w = Window.parse(text)
    except FetchError:
        raise UpdateConfigError(
            f"window {text!r}: use HH:MM-HH:MM (local time), e.g. 01:00-05:30"
        ) from None
    return LocalWindow(w.start, w.end)


def load_update_config(path: Path | None = None) -> UpdateConfig:
    """Read update.json (``$EDGEKILN_UPDATE_CONFIG`` or the image's)."""
    path = path or Path(os.environ.get("EDGEKILN_UPDATE_CONFIG", UPDATE_CONFIG))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UpdateConfigError(
            f"cannot read {path}: {exc.strerror}; this image has no [update] table in its "
            "recipe (or pass --config)"
        ) from None
    try:
        config = msgspec.json.decode(data, type=UpdateConfig)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise UpdateConfigError(f"{path}: {exc}") from None
    if not config.channels:
        raise UpdateConfigError(f"{path}: no channel URL (field channels)")
    parse_window(config.window)
    return config
