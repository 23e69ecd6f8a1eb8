"""The update agent's section of the Status screen: channel, last poll, pending release, bytes
downloaded, next window, last outcome (the rows ``appliance update status`` prints, from the
same state on data: :mod:`appliance.ota.agent_status`).

Hidden on images without hands-off updates (no ``[update]`` table, no agent state yet).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import work
from textual.widgets import Static

from appliance.ota.agent_status import UpdateStatus, update_status

REFRESH_S = 5.0


def render_update(status: UpdateStatus) -> str:
    """Label/value lines under an ``updates`` heading; a failure is marked [!!] (monochrome)."""
    rows = dict(status.rows)
    outcome = rows.get("last outcome", "-")
    failed = not rows.get("failures", "0").startswith("0 ")
    lines = [f"{'updates':<10} {rows.get('channel', '-')}"]
    for label in ("last poll", "pending", "bytes downloaded", "next window"):
        lines.append(f"  {label:<16} {rows.get(label, '-')}")
    lines.append(f"  {'last outcome':<16} {'[!!] ' if failed else ''}{outcome}")
    if failed:
        lines.append(f"  {'failures':<16} {rows['failures']}")
    return "\n".join(lines)


class UpdateAgentPanel(Static):
    """Refreshes itself from the agent's files on data (a thread worker: file reads)."""

    DEFAULT_CSS = """
    UpdateAgentPanel { height: auto; padding: 1 1 0 1; }
    UpdateAgentPanel.off { display: none; }
    """

    def __init__(
        self, data_dir: Path, clock: Callable[[], float], live: bool, **kwargs: Any
    ) -> None:
        super().__init__("", markup=False, classes="off", **kwargs)
        self.data_dir = data_dir
        self.clock = clock
        self.live = live
        self.shown: UpdateStatus | None = None

    def on_mount(self) -> None:
        self.refresh_rows()
        if self.live:
            self.set_interval(REFRESH_S, self.refresh_rows)

    @work(thread=True, exclusive=True, group="update-status")
    def refresh_rows(self) -> None:
        status = update_status(self.data_dir, self.clock())
        self.app.call_from_thread(self._show, status)

    def _show(self, status: UpdateStatus) -> None:
        self.shown = status
        used = status.configured or dict(status.rows).get("channel", "-") != "-"
        self.set_class(not used, "off")
        self.update(render_update(status))
