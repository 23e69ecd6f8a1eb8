"""What every task screen shares: the navigation bar, a message line, confirmation, logging."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from appliance.device import Device

if TYPE_CHECKING:
    from appliance.tui.app import TechnicianApp


class NavBar(Static):
    """``1 Status 2 Network ...`` with the current task in brackets (readable without colour);
    eight tasks and ``q Quit`` fit in 80 columns (:func:`nav_text`)."""

    def __init__(self, current: str) -> None:
        super().__init__(nav_text(current), markup=True)


def nav_text(current: str) -> str:
    """The navigation bar's markup: one space between tasks, the current one bracketed."""
    from appliance.tui.app import TASKS

    parts = [
        f" [reverse][{key} {title}][/reverse]" if mode == current else f" {key} {title}"
        for mode, key, title in TASKS
    ]
    return "".join(parts) + "  q Quit"


class TaskScreen(Screen[None]):
    """A screen for one task; subclasses set ``MODE`` and implement ``compose_body``."""

    MODE: ClassVar[str] = ""
    # Nothing that takes text is focused on arrival, so the digit keys always switch tasks;
    # Tab enters the form, Escape leaves it.
    AUTO_FOCUS: ClassVar[str | None] = ""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave_field", "Leave field", show=False),
    ]

    def __init__(self, device: Device) -> None:
        super().__init__()
        self.device = device

    @property
    def tech_app(self) -> TechnicianApp:
        """The app, typed."""
        from appliance.tui.app import TechnicianApp

        assert isinstance(self.app, TechnicianApp)
        return self.app

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        with Vertical(id="body"):
            yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        """The task's own widgets."""
        yield from ()

    def action_leave_field(self) -> None:
        """Escape: leave the text field so the digit keys switch tasks again."""
        self.set_focus(None)

    def say(self, text: str, widget_id: str = "message") -> None:
        """Show one line of feedback in the screen's message area."""
        self.query_one(f"#{widget_id}", Static).update(text)

    def show_error(self, field: str, problem: str | None) -> None:
        """Show (or clear) the message under form field ``field`` (``#<field>-error``)."""
        widget = self.query_one(f"#{field}-error", Static)
        widget.update(f"  ^ {problem}" if problem else "")
        widget.display = bool(problem)

    def confirm(self, question: str, details: str, on_yes: Callable[[], None], **log: Any) -> None:
        """Ask; on yes log the action on the device and run ``on_yes``; on no say so."""
        from appliance.tui.confirm import ConfirmScreen

        def done(answer: bool | None) -> None:
            if answer:
                self.device.log_action(self.MODE + "." + log.pop("action", "change"), **log)
                on_yes()
            else:
                self.say("cancelled: nothing was changed")

        self.app.push_screen(ConfirmScreen(question, details), done)
