"""6 Slots: both slots with versions and states; roll back to the other slot; mark good."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Button, Static

from appliance.errors import ApplianceError
from appliance.tui.base import TaskScreen


class SlotsScreen(TaskScreen):
    """r rolls back (confirm), g marks the running slot good (confirm)."""

    MODE = "slots"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "rollback", "Roll back"),
        Binding("g", "mark_good", "Mark good"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Static("Slots", classes="title")
        yield Static("", id="slots-table", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Roll back (r)", id="rollback", compact=True)
            yield Button("Mark good (g)", id="mark_good", compact=True)
        yield Static("", id="message", classes="message", markup=False)

    def on_mount(self) -> None:
        self.refresh_table()

    def refresh_table(self) -> None:
        """Re-read the loader environment and the update-state file."""
        from appliance.slots.state import SLOTS, loader_choice
        from appliance.state import load_state

        try:
            state = self.device.loader().read()
            booted = self.device.booted()
            record = load_state(self.device.data_dir)
        except ApplianceError as exc:
            self.query_one("#slots-table", Static).update(f"slot state unreadable: {exc}")
            return
        versions = {}
        for rec in (record.committed, record.installed):
            if rec is not None:
                versions[rec.slot] = f"{rec.version} (security {rec.security_version})"
        nxt = loader_choice(state)[0]
        lines = [f"loader: {self.device.loader().describe()}", ""]
        lines.append(f"{'slot':<5} {'state':<10} {'version':<26} notes")
        for slot in SLOTS:
            notes = [n for n, on in (("running", slot == booted), ("next boot", slot == nxt)) if on]
            version = versions.get(slot, "-")
            lines.append(f"{slot:<5} {state.status(slot):<10} {version:<26} {', '.join(notes)}")
        if state.trying is not None:
            lines.append(f"\nslot {state.trying} is on trial ({state.tries_left} boot(s) left)")
        lines.append(f"security floor: {record.security_floor}")
        self.query_one("#slots-table", Static).update("\n".join(lines))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rollback":
            self.action_rollback()
        elif event.button.id == "mark_good":
            self.action_mark_good()

    def action_rollback(self) -> None:
        from appliance.slots import state as sm

        try:
            loader, booted = self.device.loader(), self.device.booted()
            after = sm.rollback(loader.read(), booted)  # refusals show before any question
        except ApplianceError as exc:
            self.say(f"roll back refused: {exc}")
            return
        target = after.trying or after.committed
        self.confirm(
            f"Roll back: boot slot {target} next?",
            f"Running slot {booted}. Reboot afterwards to switch.",
            self._do_rollback,
            action="rollback",
            booted=booted,
            next=target,
        )

    def _do_rollback(self) -> None:
        from appliance.slots import control
        from appliance.slots.state import loader_choice

        try:
            state = control.rollback(
                self.device.loader(), self.device.booted(), self.device.data_dir
            )
        except ApplianceError as exc:
            self.say(f"roll back failed: {exc}")
            return
        self.refresh_table()
        self.say(f"next boot: slot {loader_choice(state)[0]}; reboot to switch")

    def action_mark_good(self) -> None:
        try:
            booted = self.device.booted()
            state = self.device.loader().read()
        except ApplianceError as exc:
            self.say(f"cannot mark good: {exc}")
            return
        if state.committed == booted:
            self.say(f"slot {booted} is already committed: nothing to do")
            return
        self.confirm(
            f"Mark the running slot {booted} good (commit it)?",
            "It becomes the default boot and raises the security floor to its version.",
            self._do_mark_good,
            action="mark_good",
            slot=booted,
        )

    def _do_mark_good(self) -> None:
        from appliance.slots import control

        try:
            control.commit_booted(self.device.loader(), self.device.booted(), self.device.data_dir)
        except ApplianceError as exc:
            self.say(f"mark good failed: {exc}")
            return
        self.refresh_table()
        self.say("committed")
