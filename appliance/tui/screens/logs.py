"""7 Logs: the agent's recent lines and the technician's own actions, filtered as you type."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import Input, Label, RichLog, Static

from appliance.device import Device
from appliance.tui.base import TaskScreen
from appliance.tui.logsource import action_lines, filter_lines, recent_lines


class LogsScreen(TaskScreen):
    """Type in Filter to narrow both logs (every word must match); r re-reads.

    Long lines wrap (at 80 columns a cut line would hide its end with no sign of it); the
    technician's own actions (``actions.jsonl``) sit under the agent's log.
    """

    MODE = "logs"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "reload", "Reload")]

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self._lines: list[str] = []
        self._actions: list[str] = []
        #: the lines each log shows now (before wrapping), by widget id
        self.shown: dict[str, list[str]] = {}

    def compose_body(self) -> ComposeResult:
        yield Static("Logs", classes="title", id="logs-title")
        with Horizontal(classes="form-row"):
            yield Label("Filter")
            yield Input(placeholder="words that must all appear, e.g. warning camera",
                        id="filter", compact=True)  # fmt: skip
        yield RichLog(id="log", wrap=True, markup=False, highlight=False, auto_scroll=True)
        yield Static("Technician actions (actions.jsonl)", classes="title", id="actions-title")
        yield RichLog(id="actions", wrap=True, markup=False, highlight=False, auto_scroll=True)

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self._read()

    @work(thread=True, exclusive=True, group="logs")
    def _read(self) -> None:
        where, lines = recent_lines(self.device)
        actions = action_lines(self.device)
        self.app.call_from_thread(self._loaded, where, lines, actions)

    def _loaded(self, where: str, lines: list[str], actions: list[str]) -> None:
        self._lines = lines
        self._actions = actions
        self.query_one("#logs-title", Static).update(f"Agent log: {where}")
        self._show()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._show()

    def _show(self) -> None:
        text = self.query_one("#filter", Input).value
        for widget_id, lines, empty in (
            ("#log", self._lines, f"no line matches {text!r}"),
            ("#actions", self._actions, "no action matches" if text else "no action yet"),
        ):
            log = self.query_one(widget_id, RichLog)
            log.clear()
            self.shown[widget_id] = filter_lines(lines, text) or [empty]
            for line in self.shown[widget_id]:
                log.write(line)
