"""Jetson (L4T) back end: a thin wrapper over NVIDIA's ``nvbootctrl -t rootfs`` command line.

NOT runnable on our build and CI hosts (no Jetson, no nvbootctrl); tests drive it with a fake
``nvbootctrl`` executable that records its arguments. Slots map to L4T rootfs slots
A -> 0, B -> 1. L4T keeps its own retry count (UEFI falls back to the other slot after the
configured number of failed boots, 3 by default): "once" here means "until L4T gives up",
and the agent's health gate marks a failed try unbootable explicitly.

Reading: the current slot is committed when it is also the active (next-boot) slot; an active
slot that is not the current one is a pending try; slots whose status is ``unbootable`` are bad.
"""

from __future__ import annotations

import re
import subprocess

from appliance.slots import state as sm
from appliance.slots.errors import LoaderError
from appliance.slots.state import BootState, Slot, other

_NUMBER: dict[Slot, str] = {"A": "0", "B": "1"}
_SLOT_OF = {"0": "A", "1": "B", "A": "A", "B": "B"}


class NvBootCtrlLoader:
    """Drive L4T's rootfs A/B through ``nvbootctrl``."""

    name = "nvbootctrl"

    def __init__(self, executable: str = "nvbootctrl") -> None:
        self.executable = executable

    def describe(self) -> str:
        return f"L4T rootfs slots via {self.executable} -t rootfs"

    def _run(self, *args: str) -> str:
        cmd = [self.executable, "-t", "rootfs", *args]
        try:
            proc = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as exc:
            raise LoaderError(
                f"{self.executable} not found: the nvbootctrl back end runs only on a Jetson"
            ) from exc
        except subprocess.CalledProcessError as exc:
            raise LoaderError(
                f"{' '.join(cmd)} failed ({exc.returncode}): {exc.stderr.strip()}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise LoaderError(f"{' '.join(cmd)} did not finish in 60 s") from exc
        return proc.stdout

    def read(self) -> BootState:
        text = self._run("dump-slots-info")
        current = re.search(r"Current rootfs slot:\s*([AB01])", text)
        active = re.search(r"Active rootfs slot:\s*([AB01])", text)
        if not current or not active:
            raise LoaderError(f"cannot read current/active slot from nvbootctrl output: {text!r}")
        cur: Slot = _SLOT_OF[current.group(1)]  # type: ignore[assignment]
        act: Slot = _SLOT_OF[active.group(1)]  # type: ignore[assignment]
        bad = frozenset(
            _SLOT_OF[num]
            for num, status in re.findall(r"slot:\s*([01]),\s*[^\n]*?status:\s*(\w+)", text)
            if status.lower() == "unbootable" and _SLOT_OF[num] != cur
        )
        if act != cur:
            return BootState(cur, act, 1, bad - {act})  # type: ignore[arg-type]
        return BootState(cur, None, 0, bad)  # type: ignore[arg-type]

    def deactivate(self, slot: Slot) -> None:
        sm.deactivate(self.read(), slot)  # refuses the committed slot
        self._run("set-slot-as-unbootable", _NUMBER[slot])

    def begin_try(self, slot: Slot) -> None:
        sm.begin_try(self.read(), slot)
        self._run("set-active-boot-slot", _NUMBER[slot])

    def commit(self, slot: Slot) -> None:
        self._run("mark-boot-successful")

    def mark_bad(self, slot: Slot) -> None:
        sm.mark_bad(self.read(), slot)
        self._run("set-slot-as-unbootable", _NUMBER[slot])
        self._run("set-active-boot-slot", _NUMBER[other(slot)])
