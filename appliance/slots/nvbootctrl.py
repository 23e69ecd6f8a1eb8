"""Jetson (L4T) back end: NVIDIA's rootfs A/B through ``nvbootctrl -t rootfs``, plus our record.

L4T switches root file systems itself: UEFI boots the *active* rootfs slot, counts each boot of
it down (``retry_count``, 3 by default) and, when the count runs out before the slot is marked
good, marks it ``unbootable`` and boots the other slot. What L4T does not know is which slot the
health gate committed: right after ``set-active-boot-slot 1`` and a reboot, slot B is both the
current and the active slot, committed or not. That one fact lives in a small record file on
data (``ek_committed``, ``ek_try``, ``ek_bad``, as the other loaders' environments), written
atomically (appliance/fsutil.py). Slots map to L4T rootfs slots A -> 0 (``APP``), B -> 1
(``APP_b``).

=============  ==============================================================================
transition     nvbootctrl -t rootfs ...                      record
=============  ==============================================================================
deactivate     ``set-slot-as-unbootable N``                  slot bad, no try
begin_try      ``set-active-boot-slot N`` (after read-back)  ``ek_try=N``
commit         ``mark-boot-successful``                      ``ek_committed=booted``, no try
mark_bad       ``set-slot-as-unbootable N``,                 slot bad, no try
               ``set-active-boot-slot <other>``
=============  ==============================================================================

Reading: the record's committed slot (before the first commit: the slot L4T boots now, the
factory slot); the record's try while L4T neither refused it nor fell back from it; a try the
device is running now (current == tried slot) has ``tries_left=0`` and the health gate decides;
a try L4T gave up on (current is the committed slot again, the tried one ``unbootable`` or no
longer active) reads as a used-up try, which ``control.reconcile`` marks bad.

NOT runnable on our build and CI hosts (no Jetson, no nvbootctrl); tests drive it with a
stand-in ``nvbootctrl`` (tests/slots/fake_nvbootctrl.py) that keeps L4T's slot variables in a
file and prints what NVIDIA documents.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from appliance.slots import state as sm
from appliance.slots.errors import LoaderError
from appliance.slots.filestore import FileStore
from appliance.slots.loader import EkCodec
from appliance.slots.state import BootState, Slot, other, parse_slot

_NUMBER: dict[Slot, str] = {"A": "0", "B": "1"}
_SLOT_OF: dict[str, Slot] = {"0": "A", "1": "B", "A": "A", "B": "B"}
#: Where the record lives on a device (the data partition, docs/decisions.md §9).
DEFAULT_RECORD = Path("/data/edgekiln/slots-l4t.env")


class NvBootCtrlLoader:
    """Drive L4T's rootfs A/B through ``nvbootctrl``; keep the committed slot in ``record``."""

    name = "nvbootctrl"

    def __init__(self, record: Path = DEFAULT_RECORD, executable: str = "nvbootctrl") -> None:
        self.record = FileStore(record)
        self.executable = executable
        self._codec = EkCodec()

    def describe(self) -> str:
        return f"L4T rootfs slots via {self.executable} -t rootfs, record {self.record.path}"

    def _run(self, *args: str) -> str:
        cmd = [self.executable, "-t", "rootfs", *args]
        try:
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as exc:
            raise LoaderError(
                f"{self.executable} not found: the nvbootctrl back end runs only on a Jetson "
                "(L4T with ROOTFS_AB=1)"
            ) from exc
        except subprocess.CalledProcessError as exc:
            raise LoaderError(
                f"{' '.join(cmd)} failed ({exc.returncode}): {exc.stderr.strip()}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise LoaderError(f"{' '.join(cmd)} did not finish in 60 s") from exc
        return proc.stdout

    # -- what L4T says ------------------------------------------------------------------------

    def current_slot(self) -> Slot:
        """The rootfs slot this system booted from (``get-current-slot``: 0 or 1)."""
        text = self._run("get-current-slot").strip()
        slot = _SLOT_OF.get(text)
        if slot is None:
            raise LoaderError(f"cannot read the current rootfs slot from nvbootctrl: {text!r}")
        return slot

    def _l4t(self) -> tuple[Slot, Slot, frozenset[Slot]]:
        """(current, active, unbootable slots) from ``dump-slots-info``."""
        text = self._run("dump-slots-info")
        current = re.search(r"Current rootfs slot:\s*([AB01])", text)
        active = re.search(r"Active rootfs slot:\s*([AB01])", text)
        if not current or not active:
            raise LoaderError(f"cannot read current/active slot from nvbootctrl output: {text!r}")
        unbootable = frozenset(
            _SLOT_OF[num]
            for num, status in re.findall(r"slot:\s*([01]),[^\n]*?status:\s*(\w+)", text)
            if status.lower() == "unbootable"
        )
        return _SLOT_OF[current.group(1)], _SLOT_OF[active.group(1)], unbootable

    def _recorded(self) -> dict[str, str]:
        found = self.record.read_candidates()[0]
        return dict(found) if found else {}

    # -- the loader interface -------------------------------------------------------------------

    def read(self) -> BootState:
        current, active, unbootable = self._l4t()
        rec = self._recorded()
        committed = parse_slot(rec.get(EkCodec.COMMITTED, "")) or current
        recorded_bad = {s for s in sm.SLOTS if s in rec.get(EkCodec.BAD, "")}
        bad = (unbootable | recorded_bad) - {committed}
        trying = parse_slot(rec.get(EkCodec.TRY, ""))
        if trying is None or trying == committed:
            return BootState(committed, None, 0, frozenset(bad))
        if current == trying:  # running the try: the health gate decides
            return BootState(committed, trying, 0, frozenset(bad - {trying}))
        if active == trying and trying not in unbootable:  # the next boot tries it
            return BootState(committed, trying, 1, frozenset(bad - {trying}))
        # L4T gave up on it (retries used up, or fell back): a used-up try
        return BootState(committed, trying, 0, frozenset(bad - {trying}))

    def _save(self, new: BootState) -> None:
        variables = self._recorded()
        variables.update(self._codec.encode(new))
        self.record.write(variables)

    def deactivate(self, slot: Slot) -> None:
        new = sm.deactivate(self.read(), slot)  # refuses the committed slot
        self._run("set-slot-as-unbootable", _NUMBER[slot])
        self._save(new)

    def begin_try(self, slot: Slot) -> None:
        new = sm.begin_try(self.read(), slot)
        self._save(new)  # the record first: a power cut in between leaves no unknown try
        self._run("set-active-boot-slot", _NUMBER[slot])

    def commit(self, slot: Slot) -> None:
        new = sm.commit(self.read(), slot)
        self._run("mark-boot-successful")
        self._save(new)

    def mark_bad(self, slot: Slot) -> None:
        new = sm.mark_bad(self.read(), slot)
        self._run("set-slot-as-unbootable", _NUMBER[slot])
        self._run("set-active-boot-slot", _NUMBER[other(slot)])
        self._save(new)
