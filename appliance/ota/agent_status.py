"""What ``appliance update status`` and the TUI's Status screen say about the update agent.

One function over the agent's state on data (:mod:`appliance.ota.agent_state`), its download
journal and ``update.json``, so the command line and the console show the same rows: channel,
last poll, pending release, bytes downloaded, next window, last outcome, failures.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from appliance.ota import agent_state


def verified_on_data(data_dir: Path) -> int:
    """Bytes the download journal holds verified (also after a run that was killed)."""
    import msgspec

    from appliance.ota.fetch import JOURNAL, Journal

    try:
        return msgspec.json.decode(
            (data_dir / "updates" / JOURNAL).read_bytes(), type=Journal
        ).verified
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return 0


def when(ts: float | None) -> str:
    """A Unix time in the device's local time (ISO 8601), or ``never``."""
    if not ts:
        return "never"
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class UpdateStatus:
    """The rows, and whether this image has hands-off updates at all (an ``[update]`` table)."""

    configured: bool
    rows: list[tuple[str, str]]


def update_status(data_dir: Path, now: float, config_path: Path | None = None) -> UpdateStatus:
    """The agent's rows for ``data_dir`` at Unix time ``now``."""
    from appliance.ota.agent_config import UpdateConfigError, load_update_config, parse_window

    state = agent_state.load(data_dir)
    configured = True
    window = "any time"
    try:
        config = load_update_config(config_path)
        w = parse_window(config.window)
        if w is not None:
            window = f"{config.window} local, next {when(w.next_open(now))}"
    except UpdateConfigError as exc:
        configured = False
        window = f"unknown ({exc})"
    pending = "nothing"
    fetched = state.bytes_downloaded
    if state.pending is not None:
        p = state.pending
        fetched = max(fetched, verified_on_data(data_dir))
        pending = f"{p.kind} {p.version} ({fetched} of {p.length} bytes verified on data)"
    if state.trying is not None:
        pending = f"{state.trying.version} installed in slot {state.trying.slot}, not committed"
    rows = [
        ("channel", state.channel or "-"),
        ("last poll", when(state.last_poll)),
        ("pending", pending),
        ("bytes downloaded", str(fetched)),
        ("next window", window),
        ("last outcome", f"{state.last_outcome or '-'}: {state.last_detail or ''}".rstrip(": ")),
        ("failures", f"{state.failures} (next attempt {when(state.next_attempt)})"),
    ]
    return UpdateStatus(configured, rows)
