"""The slot state machine and the environment-driven loader, on the plain-file back end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.slots import state as sm
from appliance.slots.booted import booted_slot
from appliance.slots.errors import BootedSlotUnknown, InvalidTransition
from appliance.slots.filestore import file_loader
from appliance.slots.state import BootState


def boot(state: BootState) -> tuple[sm.Slot, BootState]:
    slot, saved = sm.loader_choice(state)
    return slot, sm.after_boot(saved, slot)


def test_update_commit_cycle() -> None:
    s = BootState()
    s = sm.deactivate(s, "B")
    assert s.status("B") == "bad"
    s = sm.begin_try(s, "B")
    assert (s.status("A"), s.status("B")) == ("committed", "tried")
    slot, s = boot(s)
    assert slot == "B"
    assert s.tries_left == 0
    s = sm.commit(s, "B")
    assert s == BootState("B")
    assert boot(s)[0] == "B"


def test_failed_try_returns_and_is_marked_bad() -> None:
    s = sm.begin_try(sm.deactivate(BootState(), "B"), "B")
    assert boot(s)[0] == "B"
    slot, s = boot(sm.loader_choice(s)[1])  # the tried system died before committing
    assert slot == "A"
    assert s == BootState("A", None, 0, frozenset({"B"}))


def test_committing_the_running_committed_slot_keeps_a_pending_try() -> None:
    """``slots mark-good`` on the committed slot must not cancel an installed update."""
    pending = sm.begin_try(sm.deactivate(BootState(), "B"), "B")
    assert pending == BootState("A", "B", 1)
    assert sm.commit(pending, "A") == pending
    assert boot(sm.commit(pending, "A"))[0] == "B"


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (sm.deactivate, ("A",)),
        (sm.begin_try, ("A",)),
        (sm.mark_bad, ("A",)),
    ],
)
def test_committed_slot_is_protected(op: Any, args: tuple[str, ...]) -> None:
    with pytest.raises(InvalidTransition, match="slot A"):
        op(BootState(), *args)


def test_rollback() -> None:
    trying = sm.begin_try(BootState(), "B")
    assert sm.rollback(trying, "B") == BootState("A", None, 0, frozenset({"B"}))
    assert sm.rollback(BootState("B"), "B") == BootState("B", "A", 1)
    with pytest.raises(InvalidTransition, match="nothing to roll back"):
        sm.rollback(BootState("B", None, 0, frozenset({"A"})), "B")


@given(st.lists(st.sampled_from(["deactivate", "try", "boot", "commit", "bad"]), max_size=30))
def test_loader_always_has_a_committed_non_bad_slot(ops: list[str]) -> None:
    s = BootState()
    booted: sm.Slot = "A"
    for op in ops:
        target = sm.other(booted)
        try:
            if op == "deactivate":
                s = sm.deactivate(s, target)
            elif op == "try":
                s = sm.begin_try(s, target)
            elif op == "boot":
                booted, s = boot(s)
            elif op == "commit":
                s = sm.commit(s, booted)
            else:
                s = sm.mark_bad(s, target)
        except InvalidTransition:
            continue
        assert s.committed not in s.bad
        assert sm.loader_choice(s)[0] in ("A", "B")


def test_file_loader_round_trip(tmp_path: Path) -> None:
    loader = file_loader(tmp_path / "slots.env")
    assert loader.read() == BootState()
    loader.deactivate("B")
    loader.begin_try("B")
    assert loader.read() == BootState("A", "B", 1)
    loader.commit("B")
    assert loader.read() == BootState("B")
    assert (tmp_path / "slots.env").read_text().startswith("ek_committed=B\n")


def test_booted_slot_from_cmdline() -> None:
    assert booted_slot("BOOT_IMAGE=x root=PARTLABEL=rootfs_b edgekiln.slot=B quiet") == "B"
    with pytest.raises(BootedSlotUnknown, match=r"edgekiln\.slot"):
        booted_slot("root=/dev/sda1")
