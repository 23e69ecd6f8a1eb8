"""6 Slots: both slots with versions and states; roll back, cancel a pending update, mark good.

"Roll back" goes back to the last committed slot: it cancels a pending update (installed, to
be tried at the next boot) or leaves a slot running on trial; with nothing pending it tries the
previous release once, unless that release is below the anti-rollback floor
(docs/decisions.md §19) or unknown to this device. "Cancel pending update" does only the first.
"""

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
    """r rolls back, c cancels a pending update, g marks the running slot good (each confirmed)."""

    MODE = "slots"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "rollback", "Roll back"),
        Binding("c", "cancel_pending", "Cancel pending update"),
        Binding("g", "mark_good", "Mark good"),
    ]

    def compose_body(self) -> ComposeResult:
        yield Static("Slots", classes="title")
        yield Static("", id="slots-table", markup=False)
        with Horizontal(classes="buttons"):
            yield Button("Roll back (r)", id="rollback", compact=True)
            yield Button("Cancel pending update (c)", id="cancel_pending", compact=True)
            yield Button("Mark good (g)", id="mark_good", compact=True)
        yield Static("", id="message", classes="message", markup=False)

    def on_mount(self) -> None:
        self.refresh_table()

    def refresh_table(self) -> None:
        """Re-read the loader environment and the update-state file."""
        from appliance.slots.state import SLOTS, loader_choice
        from appliance.state import floor_of, load_state, slot_records

        try:
            state = self.device.loader().read()
            booted = self.device.booted()
            record = load_state(self.device.data_dir)
        except ApplianceError as exc:
            self.query_one("#slots-table", Static).update(f"slot state unreadable: {exc}")
            return
        versions = {}
        for rec in (
            *slot_records(self.device.data_dir).values(),
            record.committed,
            record.installed,
        ):
            if rec is not None:
                versions[rec.slot] = f"{rec.version} (security {rec.security_version})"
        nxt = loader_choice(state)[0]
        lines = [f"loader: {self.device.loader().describe()}", ""]
        lines.append(f"{'slot':<5} {'state':<10} {'version':<26} notes")
        for slot in SLOTS:
            notes = [n for n, on in (("running", slot == booted), ("next boot", slot == nxt)) if on]
            version = versions.get(slot, "-")
            lines.append(f"{slot:<5} {state.status(slot):<10} {version:<26} {', '.join(notes)}")
        if state.trying is not None and booted == state.committed:
            lines.append(f"\nupdate pending: slot {state.trying} is tried at the next boot")
        elif booted != state.committed:
            lines.append(f"\nslot {booted} runs on trial; roll back returns to {state.committed}")
        floor = floor_of(record, self.device.config.security_version)
        lines.append(f"security floor: {floor}")
        self.query_one("#slots-table", Static).update("\n".join(lines))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "rollback":
            self.action_rollback()
        elif event.button.id == "cancel_pending":
            self.action_cancel_pending()
        elif event.button.id == "mark_good":
            self.action_mark_good()

    def action_rollback(self) -> None:
        from appliance.slots import control

        try:
            booted = self.device.booted()
            # Refusals (nothing to go back to, below the floor) show before any question.
            plan = control.plan_rollback(
                self.device.loader(), booted, self.device.data_dir, self.device.config
            )
        except ApplianceError as exc:
            self.say(f"roll back refused: {exc}")
            return
        self.confirm(
            plan.question,
            plan.detail,
            self._do_rollback,
            action="rollback",
            kind=plan.kind,
            booted=booted,
            next=plan.target,
        )

    def _do_rollback(self) -> None:
        from appliance.slots import control
        from appliance.slots.state import loader_choice

        try:
            state = control.rollback(
                self.device.loader(), self.device.booted(), self.device.data_dir, self.device.config
            )
        except ApplianceError as exc:
            self.say(f"roll back failed: {exc}")
            return
        self.refresh_table()
        self.say(f"next boot: slot {loader_choice(state)[0]}; reboot to switch")

    def action_cancel_pending(self) -> None:
        from appliance.slots import state as sm

        try:
            booted = self.device.booted()
            current = self.device.loader().read()
            sm.cancel_pending(current, booted)  # refusals show before any question
        except ApplianceError as exc:
            self.say(f"cancel refused: {exc}")
            return
        self.confirm(
            f"Cancel the pending update in slot {current.trying}?",
            f"Slot {current.trying} is marked bad; slot {booted} (running, committed) stays the "
            "next boot.",
            self._do_cancel_pending,
            action="cancel_pending",
            booted=booted,
            slot=current.trying,
        )

    def _do_cancel_pending(self) -> None:
        from appliance.slots import control

        try:
            control.cancel_pending(self.device.loader(), self.device.booted(), self.device.data_dir)
        except ApplianceError as exc:
            self.say(f"cancel failed: {exc}")
            return
        self.refresh_table()
        self.say("pending update cancelled: the running slot stays the next boot")

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
            device = self.device
            control.commit_booted(device.loader(), device.booted(), device.data_dir, device.config)
        except ApplianceError as exc:
            self.say(f"mark good failed: {exc}")
            return
        self.refresh_table()
        self.say("committed")
