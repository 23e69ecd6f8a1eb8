"""Slot operations the agent and the CLI perform, in terms of the booted slot.

Thin glue between the state machine, a :class:`~appliance.slots.loader.Loader` and the
anti-rollback record in :mod:`appliance.state`: committing a slot is what raises the
``security_version`` floor (docs/decisions.md §5), and no commit, rollback or slot action boots
below it (§19). Every commit writes the state file's committed record for the slot the loader
now commits, so the two never disagree (a power cut between them is repaired by
:func:`reconcile` at the next boot).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from appliance.slots import state as sm
from appliance.slots.errors import BelowFloorError
from appliance.slots.loader import Loader
from appliance.slots.state import BootState, Slot, other

if TYPE_CHECKING:
    from appliance.device import DeviceConfig
    from appliance.state import SlotRecord, UpdateState

log = logging.getLogger(__name__)


def running_record(booted: Slot, config: DeviceConfig | None = None) -> SlotRecord:
    """What the running slot says of itself (its device.json): version and security_version."""
    from appliance.device import running_config
    from appliance.state import SlotRecord

    config = config or running_config()
    return SlotRecord(booted, config.version, config.security_version)


def _booted_record(booted: Slot, state: UpdateState, config: DeviceConfig | None) -> SlotRecord:
    """The record of the booted slot: its install record, else its own device.json."""
    if state.installed is not None and state.installed.slot == booted:
        own = running_record(booted, config)
        if own.security_version > state.installed.security_version:
            return dataclasses.replace(state.installed, security_version=own.security_version)
        return state.installed
    return running_record(booted, config)


def reconcile(
    loader: Loader, booted: Slot, data_dir: Path | None, config: DeviceConfig | None = None
) -> BootState:
    """After boot: mark a used-up try bad; record the committed slot if the state lacks it.

    The second part is what records a factory-fresh device's floor (its first boot has no state
    file) and repairs a power cut between the loader's commit and the state file's.
    """
    current = loader.read()
    after = sm.after_boot(current, booted)
    if after != current and current.trying is not None:
        log.warning("slot %s was tried and did not commit: marking it bad", current.trying)
        _forget_install(loader, current.trying, data_dir)
    now = loader.read()
    if data_dir is not None and now.committed == booted:
        from appliance.state import (
            StateError,
            load_state,
            note_slot,
            record_committed,
            slot_records,
        )

        try:
            state = load_state(data_dir)
        except StateError as exc:  # the agent must still run; installs refuse until it is fixed
            log.error("cannot record the committed slot: %s", exc)
            return now
        if state.committed is None or state.committed.slot != booted:
            record = _booted_record(booted, state, config)
            record_committed(data_dir, record)
            log.warning(
                "recorded the committed slot %s (%s, security_version %d)",
                booted,
                record.version,
                record.security_version,
            )
        elif booted not in slot_records(data_dir):  # recorded by a runtime before slot records
            note_slot(data_dir, state.committed)
    return now


def on_trial(state: BootState, booted: Slot) -> bool:
    """Whether the booted slot is on trial (tried, not committed): the health gate decides."""
    return booted != state.committed


def commit_booted(
    loader: Loader, booted: Slot, data_dir: Path | None, config: DeviceConfig | None = None
) -> None:
    """Make the booted slot the default and raise the security floor to its version.

    Refused (:class:`BelowFloorError`, nothing changed) when the booted slot holds a
    ``security_version`` below the floor: e.g. the loader fell back to an old slot because the
    committed one's kernel did not load.
    """
    if data_dir is None:
        loader.commit(booted)
        return
    from appliance.state import floor_of, load_state, record_committed

    state = load_state(data_dir)
    record = _booted_record(booted, state, config)
    floor = floor_of(state, 0)
    if record.security_version < floor:
        raise BelowFloorError(
            f"slot {booted} holds {record.version} (security_version "
            f"{record.security_version}), below this device's anti-rollback floor {floor}: "
            "not committed; mark it bad and reboot to return to the committed slot"
        )
    loader.commit(booted)
    record_committed(data_dir, record)


def fail_booted(loader: Loader, booted: Slot, data_dir: Path | None) -> None:
    """The booted slot failed its trial: mark it bad (the next boot returns to committed)."""
    _forget_install(loader, booted, data_dir)


def _forget_install(loader: Loader, slot: Slot, data_dir: Path | None) -> None:
    loader.mark_bad(slot)
    if data_dir is None:
        return
    from appliance.state import load_state, record_rolled_back

    record = load_state(data_dir).installed
    if record is not None and record.slot == slot:
        record_rolled_back(data_dir)


@dataclasses.dataclass(frozen=True)
class RollbackPlan:
    """What "roll back" does from here, for a question before it is done."""

    kind: Literal["cancel", "leave", "previous"]
    booted: Slot
    target: Slot  # the slot the next boot starts
    question: str
    detail: str


def plan_rollback(
    loader: Loader, booted: Slot, data_dir: Path | None, config: DeviceConfig | None = None
) -> RollbackPlan:
    """Where "roll back" goes: back to the last committed slot, or the previous release once.

    Raises (nothing changed) when there is nothing to roll back to, or when the previous
    release is below the anti-rollback floor or not known to this device.
    """
    state = loader.read()
    if booted != state.committed:
        return RollbackPlan(
            "leave",
            booted,
            state.committed,
            f"Leave the trial of slot {booted} and return to slot {state.committed}?",
            f"Slot {booted} is marked bad; slot {state.committed} (committed) boots next. "
            "Reboot afterwards.",
        )
    if state.trying is not None:
        return RollbackPlan(
            "cancel",
            booted,
            booted,
            f"Cancel the pending update in slot {state.trying}?",
            f"Slot {state.trying} is marked bad; slot {booted} (running, committed) stays the "
            "next boot. No reboot needed.",
        )
    after = sm.rollback(state, booted)  # refuses a bad other slot
    target = after.trying or other(booted)
    record = _check_floor(target, data_dir, config)
    return RollbackPlan(
        "previous",
        booted,
        target,
        f"Roll back: try slot {target} ({record.version}) once at the next boot?",
        f"It must pass the health check to be committed; otherwise slot {booted} boots again. "
        "Reboot afterwards.",
    )


def _check_floor(target: Slot, data_dir: Path | None, config: DeviceConfig | None) -> SlotRecord:
    """The record of ``target`` if it may boot: known, and not below the floor."""
    if data_dir is None:
        raise BelowFloorError(
            f"slot {target}'s release cannot be checked against the anti-rollback floor "
            "without the data partition; pass --data-dir"
        )
    from appliance.state import security_floor, slot_records

    record = slot_records(data_dir).get(target)
    if record is None:
        raise BelowFloorError(
            f"slot {target} holds no release this device recorded, so its security_version "
            "cannot be checked against the anti-rollback floor: roll back refused; install a "
            "bundle instead"
        )
    floor = security_floor(data_dir, None if config is None else config.security_version)
    if record.security_version < floor:
        raise BelowFloorError(
            f"slot {target} holds {record.version} (security_version "
            f"{record.security_version}), below this device's anti-rollback floor {floor}: "
            "roll back refused; install a newer bundle instead"
        )
    return record


def rollback(
    loader: Loader, booted: Slot, data_dir: Path | None, config: DeviceConfig | None = None
) -> BootState:
    """Go back to the last committed slot (cancel a pending try, leave a trial), or else try
    the previous release once if it is not below the floor."""
    plan = plan_rollback(loader, booted, data_dir, config)
    if plan.kind == "leave":
        fail_booted(loader, booted, data_dir)
    elif plan.kind == "cancel":
        cancel_pending(loader, booted, data_dir)
    else:
        loader.begin_try(plan.target)
    return loader.read()


def cancel_pending(loader: Loader, booted: Slot, data_dir: Path | None) -> BootState:
    """Cancel the pending update: the slot to be tried next boot is marked bad."""
    state = loader.read()
    sm.cancel_pending(state, booted)  # validates; raises InvalidTransition when nothing pends
    assert state.trying is not None
    _forget_install(loader, state.trying, data_dir)
    return loader.read()
