"""The boot-level deadline of a tried slot: committed in time, or back to the committed slot.

A tried slot gets one boot (the loader counts the try down before loading its kernel), so any
reboot returns to the committed slot. What must never happen is a tried system that neither
commits nor reboots. The layers, outermost first:

* the kernel or the initramfs fails (panic, root not found): ``panic=N`` on the command line
  (grub.cfg / boot.scr) reboots after N seconds; initramfs-tools honours it instead of
  dropping to a shell;
* the kernel or PID 1 hangs once systemd runs: the hardware watchdog (``RuntimeWatchdogSec``,
  docs/decisions.md §4) resets;
* the agent crashes or hangs repeatedly: ``StartLimitAction=reboot`` on the agent unit;
* everything else (the agent never starts because a dependency failed, e.g. the ESP did not
  mount; emergency mode; a health gate that never finishes; a start job that never ends):
  ``edgekiln-trial-deadline.timer``, armed only when the loader put ``edgekiln.trial=1`` on the
  command line, runs :func:`check_deadline` ``OnBootSec`` after boot. If the booted slot is not
  committed by then, it is marked bad and the unit fails, and the unit's
  ``FailureAction=reboot-force`` reboots. Any error (the environment unreadable, the runtime
  not starting) also fails the unit: the safe direction on a trial boot.

Not covered here: a kernel that locks up before systemd arms the watchdog; only a watchdog
the firmware arms (and the kernel leaves alone: ``watchdog.handle_boot_enabled=0`` or
``watchdog.open_timeout=``) can reset that.
"""

from __future__ import annotations

import logging
from pathlib import Path

from appliance.slots import control
from appliance.slots.errors import SlotError
from appliance.slots.loader import Loader
from appliance.slots.state import Slot

log = logging.getLogger(__name__)

#: The kernel argument the loader scripts add when the booted slot is on trial.
TRIAL_ARG = "edgekiln.trial=1"


class TrialExpired(SlotError):
    """The booted slot was still on trial at its boot deadline (it is now marked bad)."""


def on_trial_boot(cmdline: str) -> bool:
    """Whether the loader booted this kernel on trial (``edgekiln.trial=1``)."""
    return TRIAL_ARG in cmdline.split()


def check_deadline(loader: Loader, booted: Slot, data_dir: Path | None) -> str:
    """Return a one-line all-clear if ``booted`` is committed; else mark it bad and raise.

    Raises :class:`TrialExpired` after marking the booted slot bad (best effort: the loader's
    try is spent already, so the reboot the caller's unit performs returns to the committed
    slot even if this write fails).
    """
    state = loader.read()
    if not control.on_trial(state, booted):
        return f"slot {booted} is committed; the trial deadline has nothing to do"
    try:
        control.fail_booted(loader, booted, data_dir)
        marked = "marked bad"
    except Exception as exc:  # the reboot still returns to the committed slot
        log.error("could not mark slot %s bad: %s", booted, exc)
        marked = f"not marked bad ({exc})"
    raise TrialExpired(
        f"slot {booted} was not committed by its boot deadline (slot {state.committed} is "
        f"committed); {marked}: rebooting returns to slot {state.committed}"
    )
