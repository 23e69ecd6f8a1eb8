"""Installed-version and anti-rollback state, kept on the data partition and written atomically.

One JSON file, ``update-state-v1.json`` (the format version is in the name so a newer runtime
writes a new file beside it and an older slot keeps reading its own: docs/decisions.md §10).

``security_floor`` is the highest ``security_version`` of any **committed** slot (Decision 5):
a bundle that was installed but rolled back before commit never raises it. The bundle reader
takes the floor as ``Policy.min_security_version``. A damaged file is an error, never silently
reset: resetting would reopen the door to rollback attacks.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from appliance.errors import ApplianceError
from appliance.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

STATE_FORMAT = 1
STATE_NAME = f"update-state-v{STATE_FORMAT}.json"


class StateError(ApplianceError):
    """The update state file on data is unreadable or malformed."""


class SlotRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What a slot holds: written by an install, confirmed by a commit."""

    slot: str
    version: str
    security_version: int
    bundle_key_id: str | None = None


class UpdateState(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The whole state file."""

    format: int = STATE_FORMAT
    security_floor: int = 0
    committed: SlotRecord | None = None
    installed: SlotRecord | None = None


def state_path(data_dir: Path) -> Path:
    """Where the state lives inside the data partition's mount point."""
    return Path(data_dir) / STATE_NAME


def load_state(data_dir: Path) -> UpdateState:
    """Read the state; a missing file is a fresh device (floor 0), a damaged one an error."""
    path = state_path(data_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return UpdateState()
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        state = msgspec.json.decode(data, type=UpdateState, strict=True)
    except msgspec.DecodeError as exc:
        raise StateError(
            f"{path} is damaged ({exc}); restore it from a backup or re-provision the device "
            "(it holds the anti-rollback floor, so it is never reset automatically)"
        ) from None
    if state.format != STATE_FORMAT:
        raise StateError(f"{path}: format {state.format} unsupported (knows {STATE_FORMAT})")
    if state.security_floor < 0:
        raise StateError(f"{path}: security_floor must be >= 0")
    return state


def save_state(data_dir: Path, state: UpdateState) -> None:
    """Replace the state file atomically and durably."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(state_path(data_dir), msgspec.json.encode(state) + b"\n", mode=0o644)


def security_floor(data_dir: Path) -> int:
    """The minimum ``security_version`` a bundle needs on this device."""
    return load_state(data_dir).security_floor


def record_installed(data_dir: Path, record: SlotRecord) -> UpdateState:
    """Note that ``record.slot`` now holds a new, not yet committed, version."""
    old = load_state(data_dir)
    new = msgspec.structs.replace(old, installed=record)
    save_state(data_dir, new)
    log.info(
        "installed %s (security_version %d) in slot %s",
        record.version,
        record.security_version,
        record.slot,
    )
    return new


def record_committed(data_dir: Path, record: SlotRecord) -> UpdateState:
    """Note that ``record.slot`` passed its health gate; the floor rises to its security_version."""
    old = load_state(data_dir)
    installed = (
        None if old.installed is not None and old.installed.slot == record.slot else old.installed
    )
    new = UpdateState(
        security_floor=max(old.security_floor, record.security_version),
        committed=record,
        installed=installed,
    )
    save_state(data_dir, new)
    log.info(
        "committed %s in slot %s; security floor %d",
        record.version,
        record.slot,
        new.security_floor,
    )
    return new


def record_rolled_back(data_dir: Path) -> UpdateState:
    """Forget the uncommitted install (the floor stays where the last commit put it)."""
    old = load_state(data_dir)
    new = msgspec.structs.replace(old, installed=None)
    save_state(data_dir, new)
    return new
