"""Slot operations the agent and the CLI perform, in terms of the booted slot.

Thin glue between the state machine, a :class:`~appliance.slots.loader.Loader` and the
anti-rollback record in :mod:`appliance.state` (owned by the bundle package): committing a slot
is what raises the ``security_version`` floor (docs/decisions.md §5).
"""

from __future__ import annotations

import logging
from pathlib import Path

from appliance.slots import state as sm
from appliance.slots.loader import Loader
from appliance.slots.state import BootState, Slot

log = logging.getLogger(__name__)


def reconcile(loader: Loader, booted: Slot, data_dir: Path | None) -> BootState:
    """After boot: a try the loader used up while we run another slot failed; mark it bad."""
    current = loader.read()
    after = sm.after_boot(current, booted)
    if after != current and current.trying is not None:
        log.warning("slot %s was tried and did not commit: marking it bad", current.trying)
        _forget_install(loader, current.trying, data_dir)
    return loader.read()


def on_trial(state: BootState, booted: Slot) -> bool:
    """Whether the booted slot is on trial (tried, not committed): the health gate decides."""
    return booted != state.committed


def commit_booted(loader: Loader, booted: Slot, data_dir: Path | None) -> None:
    """Make the booted slot the default and raise the security floor to its version."""
    loader.commit(booted)
    if data_dir is None:
        return
    from appliance.state import load_state, record_committed

    record = load_state(data_dir).installed
    if record is not None and record.slot == booted:
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


def rollback(loader: Loader, booted: Slot, data_dir: Path | None) -> BootState:
    """Boot the other slot next: end a trial, or try the previous slot once."""
    state = loader.read()
    target = sm.rollback(state, booted)  # validates; raises InvalidTransition when impossible
    if on_trial(state, booted):
        fail_booted(loader, booted, data_dir)
    else:
        assert target.trying is not None
        loader.begin_try(target.trying)
    return loader.read()
