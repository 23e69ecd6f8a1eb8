"""7 Logs: the agent's recent journal (or log file) lines, filtered as you type."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Input, Label, Log, Static

from appliance.device import Device
from appliance.tui.base import TaskScreen
from appliance.tui.logsource import filter_lines, recent_lines


class LogsScreen(TaskScreen):
    """Type in Filter to narrow the lines (every word must match); r re-reads."""

    MODE = "logs"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reload", "Reload")]

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self._lines: list[str] = []

    def compose_body(self) -> ComposeResult:
        yield Static("Logs", classes="title", id="logs-title")
        with Horizontal(classes="form-row"):
            yield Label("Filter")
            yield Input(placeholder="words that must all appear, e.g. warning camera",
                        id="filter", compact=True)  # fmt: skip
        yield Log(id="log", auto_scroll=True)

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self._read()

    @work(thread=True, exclusive=True, group="logs")
    def _read(self) -> None:
        where, lines = recent_lines(self.device)
        self.app.call_from_thread(self._loaded, where, lines)

    def _loaded(self, where: str, lines: list[str]) -> None:
        self._lines = lines
        self.query_one("#logs-title", Static).update(f"Logs: {where}")
        self._show()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._show()

    def _show(self) -> None:
        text = self.query_one("#filter", Input).value
        shown = filter_lines(self._lines, text)
        log = self.query_one("#log", Log)
        log.clear()
        log.write_lines(shown or [f"no line matches {text!r}"])
