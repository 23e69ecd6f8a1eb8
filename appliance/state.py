"""Installed-version and anti-rollback state, kept on the data partition and written atomically.

``update-state-v1.json`` (the format version is in the name so a newer runtime writes a new
file beside it and an older slot keeps reading its own: docs/decisions.md §10) holds the
committed and the pending install; ``slot-records-v1.json`` beside it what each slot holds
(version, ``security_version``), so that a rollback can be checked against the floor.

The **floor** (docs/decisions.md §19) is the highest of: the state file's ``security_floor``
(the highest ``security_version`` of any committed slot: §5, an install rolled back before its
commit never raises it), its committed record, and the running slot's own ``security_version``
(``device.json`` inside the slot: signed with the slot image, read-only). So a factory-fresh
device (no state file) or one whose state file was deleted keeps the floor of the release it
runs. A damaged or unreadable state file is an error, never silently reset.
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


def running_security_version() -> int:
    """The running slot's own ``security_version`` (its device.json; 0 on a development host)."""
    from appliance.device import running_config

    return running_config().security_version


def floor_of(state: UpdateState, slot_floor: int) -> int:
    """The highest of the state's floor, its committed record and the running slot's level."""
    committed = state.committed.security_version if state.committed is not None else 0
    return max(state.security_floor, committed, slot_floor)


def security_floor(data_dir: Path, slot_floor: int | None = None) -> int:
    """The minimum ``security_version`` a bundle (or a slot to boot) needs on this device.

    ``slot_floor`` is the running slot's own ``security_version`` (default: read from the
    running system's device.json). A missing state file gives that; a damaged one raises.
    """
    if slot_floor is None:
        slot_floor = running_security_version()
    return floor_of(load_state(data_dir), slot_floor)


def record_installed(data_dir: Path, record: SlotRecord) -> UpdateState:
    """Note that ``record.slot`` now holds a new, not yet committed, version."""
    old = load_state(data_dir)
    new = msgspec.structs.replace(old, installed=record)
    note_slot(data_dir, record)
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
        security_floor=max(floor_of(old, 0), record.security_version),
        committed=record,
        installed=installed,
    )
    note_slot(data_dir, record)
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


# -- what each slot holds ------------------------------------------------------------------

SLOTS_NAME = f"slot-records-v{STATE_FORMAT}.json"


class SlotRecords(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``slot-records-v1.json``: the release each slot holds, by slot name."""

    format: int = STATE_FORMAT
    slots: dict[str, SlotRecord] = msgspec.field(default_factory=dict)


def slot_records(data_dir: Path) -> dict[str, SlotRecord]:
    """What each slot holds, as far as this device recorded it.

    A missing or damaged file means "unknown" (an empty mapping): a slot whose release is
    unknown is never booted by a rollback, so nothing here can lower the floor.
    """
    path = Path(data_dir) / SLOTS_NAME
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=SlotRecords, strict=True)
    except FileNotFoundError:
        return {}
    except (OSError, msgspec.DecodeError) as exc:
        log.warning("%s is unreadable (%s): slot contents unknown", path, exc)
        return {}
    return {k: v for k, v in doc.slots.items() if k == v.slot}


def note_slot(data_dir: Path, record: SlotRecord) -> None:
    """Record that ``record.slot`` holds ``record`` (installed or committed)."""
    slots = {**slot_records(data_dir), record.slot: record}
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    body = msgspec.json.encode(SlotRecords(slots=slots)) + b"\n"
    atomic_write_bytes(Path(data_dir) / SLOTS_NAME, body, mode=0o644)
