"""Checks of the recipe's ``[update]`` table (hands-off updates over a TUF channel)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from image.recipe.schema import LoadedRecipe, RecipeError

_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")
_CAP_RE = re.compile(r"^([1-9]\d*)([kKmMgG]?)$")
Fail = Callable[[LoadedRecipe, str, str], RecipeError]


def bandwidth_bytes(text: str | None) -> int | None:
    """``200k`` / ``2M`` / ``100000`` -> bytes per second (None: no cap)."""
    if text is None:
        return None
    m = _CAP_RE.match(text)
    if m is None:
        raise ValueError(text)
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def check_update(loaded: LoadedRecipe, fail: Fail, *, check_files: bool) -> None:
    """Every field of ``[update]``; the first wrong one raises naming file and field."""
    u = loaded.recipe.update
    if not u.channels:
        return
    for n, url in enumerate(u.channels):
        if not url.startswith(("http://", "https://")) or len(url) < 10:
            raise fail(loaded, f"update.channels.{n}", f"{url!r} is not an http(s):// URL")
    if not u.tuf_root:
        raise fail(loaded, "update.tuf_root",
                   "the channel's TUF root.json is needed (REPO/metadata/1.root.json)")  # fmt: skip
    if check_files:
        path = loaded.resolve(u.tuf_root)
        try:
            doc: Any = json.loads(path.read_bytes())
            ok = doc["signed"]["_type"] == "root"
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise fail(loaded, "update.tuf_root", f"{path} is not a TUF root.json (kiln publish)")
    _check_schedule(loaded, fail)


def _check_schedule(loaded: LoadedRecipe, fail: Fail) -> None:
    u = loaded.recipe.update
    if not 60 <= u.poll_interval_s <= 7 * 86400:
        raise fail(loaded, "update.poll_interval_s", "must be from 60 (1 min) to 604800 (7 days)")
    if not 0 <= u.poll_jitter_s <= u.poll_interval_s:
        raise fail(loaded, "update.poll_jitter_s", "must be from 0 to poll_interval_s")
    if u.window is not None and not _WINDOW_RE.match(u.window):
        raise fail(loaded, "update.window", f"{u.window!r}: use HH:MM-HH:MM (local time)")
    try:
        bandwidth_bytes(u.bandwidth_cap)
    except ValueError:
        raise fail(loaded, "update.bandwidth_cap",
                   f"{u.bandwidth_cap!r}: bytes per second, e.g. 200k or 2M") from None  # fmt: skip
    if u.reboot == "window" and u.window is None:
        raise fail(loaded, "update.reboot", "'window' needs update.window (or use now / manual)")
    if u.metered and u.bandwidth_cap is None and u.window is None:
        raise fail(loaded, "update.metered",
                   "a metered link needs update.bandwidth_cap or update.window")  # fmt: skip
    if not 1 <= u.max_bundle_mib <= 65536:
        raise fail(loaded, "update.max_bundle_mib", "must be from 1 to 65536")
    if not 0 <= u.deltas <= 20:
        raise fail(loaded, "update.deltas", "must be from 0 to 20 (releases to make deltas from)")
