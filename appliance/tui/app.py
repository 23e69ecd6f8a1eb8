"""The Textual app: one mode (screen) per task, switched with the digit keys 1-9."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from appliance.device import Device
from appliance.tui.devstatus import DeviceStatus, collect_status

# (mode, key, title): the order is the navigation bar's and the keys the technician presses.
TASKS: tuple[tuple[str, str, str], ...] = (
    ("status", "1", "Status"),
    ("network", "2", "Network"),
    ("camera", "3", "Camera"),
    ("model", "4", "Model"),
    ("update", "5", "Update"),
    ("slots", "6", "Slots"),
    ("logs", "7", "Logs"),
    ("pair", "8", "Pair"),
)
# Reached by their key, not (yet) listed in the navigation bar: (mode, key, title).
MORE_TASKS: tuple[tuple[str, str, str], ...] = (("fleet", "9", "Fleet"),)


class TechnicianApp(App[None]):
    """On-site setup: status, network, camera, model check, update, slots, logs, pairing."""

    TITLE = "edgekiln technician"
    CSS_PATH = Path(__file__).with_name("app.tcss")
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        *(
            Binding(key, f"switch_mode('{mode}')", title, show=False)
            for mode, key, title in (*TASKS, *MORE_TASKS)
        ),
        *(
            Binding(f"f{i}", f"switch_mode('{mode}')", title, show=False)
            for i, (mode, _key, title) in enumerate((*TASKS, *MORE_TASKS), start=1)
        ),
        Binding("q", "quit", "Quit", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        device: Device,
        *,
        clock: Callable[[], float] = time.time,
        live: bool = True,
        exit_after_paint: bool = False,
        status_fn: Callable[[Device, float], DeviceStatus] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` feeds the status (tests pin it); ``live=False`` stops periodic refresh.

        ``wall_clock`` stamps what happens on this console (a model check's time): the demo
        pins ``clock`` to its snapshot of agent files, never the time a check really ran.

        ``status_fn`` replaces :func:`~appliance.tui.devstatus.collect_status` (snapshot tests
        freeze the figures that differ between machines, such as disk size).
        """
        super().__init__()
        self.device = device
        self.clock = clock
        self.wall_clock = wall_clock
        self.live = live
        self.exit_after_paint = exit_after_paint
        self.status_fn = status_fn or collect_status
        from appliance.tui.screens import make_screen

        for mode, _key, _title in (*TASKS, *MORE_TASKS):
            self.add_mode(mode, lambda mode=mode: make_screen(mode, self.device))  # type: ignore[misc]

    def on_mount(self) -> None:
        self.switch_mode("status")
