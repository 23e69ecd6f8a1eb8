"""The A/B slot state machine: one place that decides what may happen to a slot.

The persistent record (:class:`BootState`) is what every loader back end stores in its own
variables; the functions here are pure transitions over it. Per slot the states are:

* ``committed`` -- the slot the loader boots by default (passed its health gate once);
* ``tried``     -- the loader boots it once (``tries_left == 1``) or has just done so
  (``tries_left == 0``) and is waiting for the health gate;
* ``bad``       -- not bootable: being written, or failed its try;
* ``inactive``  -- none of the above (a previous good version, never chosen by the loader).

``active`` is not stored: it is the slot the running kernel came from (``edgekiln.slot=`` on
the kernel command line, see :mod:`appliance.slots.booted`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from appliance.slots.errors import InvalidTransition

Slot = Literal["A", "B"]
SLOTS: tuple[Slot, Slot] = ("A", "B")
#: Where every loader falls back to when its environment is missing or garbled.
SAFE_DEFAULT: Slot = "A"


def other(slot: Slot) -> Slot:
    """The other slot of the pair."""
    return "B" if slot == "A" else "A"


def parse_slot(value: str) -> Slot | None:
    """``"A"``/``"B"`` (any case) -> slot, anything else -> None."""
    upper = value.strip().upper()
    if upper == "A":
        return "A"
    if upper == "B":
        return "B"
    return None


@dataclasses.dataclass(frozen=True)
class BootState:
    """What the loader needs to choose a slot, plus which slots are known bad."""

    committed: Slot = SAFE_DEFAULT
    trying: Slot | None = None
    tries_left: int = 0
    bad: frozenset[Slot] = frozenset()

    def __post_init__(self) -> None:
        if self.trying == self.committed:
            raise InvalidTransition(f"slot {self.trying} cannot be both committed and tried")
        if self.tries_left not in (0, 1):
            raise InvalidTransition(f"tries_left must be 0 or 1, not {self.tries_left}")
        if self.committed in self.bad:
            raise InvalidTransition(f"the committed slot {self.committed} cannot be bad")

    def status(self, slot: Slot) -> str:
        """``committed``, ``tried``, ``bad`` or ``inactive``."""
        if slot == self.committed:
            return "committed"
        if slot == self.trying:
            return "tried"
        if slot in self.bad:
            return "bad"
        return "inactive"


def deactivate(state: BootState, target: Slot) -> BootState:
    """Mark ``target`` not bootable before anything is written into it.

    Refuses the committed slot: the loader would have nothing safe left to boot.
    """
    if target == state.committed:
        raise InvalidTransition(
            f"slot {target} is the committed slot; install into slot {other(target)} "
            "(commit the running slot first if it is still on trial)"
        )
    return BootState(state.committed, None, 0, state.bad | {target})


def begin_try(state: BootState, target: Slot) -> BootState:
    """Ask the loader to boot ``target`` once (after it was written and read back)."""
    if target == state.committed:
        raise InvalidTransition(f"slot {target} is already committed; nothing to try")
    return BootState(state.committed, target, 1, state.bad - {target})


def loader_choice(state: BootState) -> tuple[Slot, BootState]:
    """What the loader scripts do at power-on: the slot to boot and the state they save.

    A model of grub.cfg / boot.cmd for simulations (tools/powercut.py); the real scripts are
    tested against this model in tests/slots, not replaced by it.
    """
    if state.trying is not None and state.tries_left > 0:
        return state.trying, dataclasses.replace(state, tries_left=0)
    return state.committed, state


def after_boot(state: BootState, booted: Slot) -> BootState:
    """Reconcile the record with the slot that actually booted.

    A try that the loader used up without the agent committing it, while we are running the
    committed slot again, failed (crash, hang, power cut, failed health gate): mark it bad.
    """
    if state.trying is not None and state.tries_left == 0 and booted != state.trying:
        return BootState(state.committed, None, 0, state.bad | {state.trying})
    return state


def commit(state: BootState, booted: Slot) -> BootState:
    """Make the booted slot the default; called only after its health gate passed.

    Committing the slot that is already committed keeps a pending try of the other slot (an
    installed update waiting for the next boot): ``slots mark-good`` must not cancel it.
    """
    if booted == state.committed and state.trying not in (None, booted):
        return BootState(booted, state.trying, state.tries_left, state.bad - {booted})
    return BootState(booted, None, 0, state.bad - {booted})


def mark_bad(state: BootState, slot: Slot) -> BootState:
    """Mark ``slot`` not bootable; the committed slot cannot be marked bad."""
    if slot == state.committed:
        raise InvalidTransition(
            f"slot {slot} is committed and the loader's only safe choice; "
            f"commit slot {other(slot)} first or install a new bundle"
        )
    trying = None if state.trying == slot else state.trying
    tries = state.tries_left if trying is not None else 0
    return BootState(state.committed, trying, tries, state.bad | {slot})


def cancel_pending(state: BootState, booted: Slot) -> BootState:
    """Forget a try that has not started: the tried slot is marked bad, the committed one stays."""
    if booted != state.committed:
        raise InvalidTransition(
            f"slot {booted} is running on trial: no update is pending; roll back to leave the "
            f"trial (the next boot returns to the committed slot {state.committed})"
        )
    if state.trying is None:
        raise InvalidTransition(
            f"no update is pending: slot {booted} is committed and the next boot is slot {booted}"
        )
    return mark_bad(state, state.trying)


def rollback(state: BootState, booted: Slot) -> BootState:
    """Go back to the last committed slot; from the committed slot, try the other one once.

    * a try is pending (the booted slot is committed, the other one is tried next boot): the
      pending update is cancelled (the tried slot is marked bad);
    * the booted slot is on trial: it is marked bad, the loader returns to the committed slot;
    * nothing is pending: the other slot (the previous release) is tried once and must pass the
      health gate again. A bad other slot is refused here; the anti-rollback floor is checked by
      :func:`appliance.slots.control.rollback`, which knows what each slot holds.
    """
    if booted != state.committed:
        return mark_bad(state, booted)
    if state.trying is not None:
        return cancel_pending(state, booted)
    target = other(booted)
    if target in state.bad:
        raise InvalidTransition(f"slot {target} is marked bad; there is nothing to roll back to")
    return begin_try(state, target)
