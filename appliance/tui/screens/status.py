"""1 Status (home): identity, slots, health, model and back end, FPS/latency, temperature, disk."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from appliance.tui.base import TaskScreen
from appliance.tui.devstatus import DeviceStatus, human_bytes
from appliance.tui.drift_panel import DriftPanel

REFRESH_S = 2.0


def render_status(s: DeviceStatus) -> str:
    """Label/value lines; states are words ([OK], [!!]) so a monochrome terminal shows them."""

    def ok(flag: bool) -> str:
        return "[OK]" if flag else "[!!]"

    if s.latency_p50_ms is not None and s.latency_budget_ms is not None:
        within = s.latency_p50_ms <= s.latency_budget_ms
        latency = (
            f"p50 {s.latency_p50_ms:.1f} ms / budget {s.latency_budget_ms:.1f} ms {ok(within)}"
        )
    elif s.latency_p50_ms is not None:
        latency = f"p50 {s.latency_p50_ms:.1f} ms (no budget known)"
    else:
        latency = "-"
    mode = s.mode if not s.mode_reason else f"{s.mode}: {s.mode_reason}"
    disk = "-"
    if s.disk_used is not None and s.disk_total:
        pct = 100 * s.disk_used / s.disk_total
        disk = (
            f"{human_bytes(s.disk_used)} of {human_bytes(s.disk_total)} ({pct:.0f}%) {ok(pct < 90)}"
        )
    temp = "-" if s.temperature_c is None else f"{s.temperature_c:.1f} C {ok(s.temperature_c < 80)}"
    rows = [
        ("device", f"{s.device_id}  ({s.product}, {s.target})"),
        ("version", s.version),
        ("slots", f"running {s.booted}, committed {s.committed}, next boot {s.next_boot}"),
        ("health", f"{ok(s.health.startswith('ok'))} {s.health}"),
        ("model", f"{s.model} on {s.backend}"),
        ("mode", f"{ok(s.mode == 'primary')} {mode}"),
        ("fps", "-" if s.fps is None else f"{s.fps:.1f}"),
        ("latency", latency),
        ("temp", temp),
        ("data disk", disk),
        ("telemetry", s.telemetry_backlog),
        ("self-test", s.selftest),
    ]
    return "\n".join(f"{label:<10} {value}" for label, value in rows)


class StatusScreen(TaskScreen):
    """The home screen; refreshes every two seconds from the agent's files."""

    MODE = "status"
    CSS_PATH = Path(__file__).with_suffix(".tcss")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("r", "refresh_status", "Refresh")]

    def compose_body(self) -> ComposeResult:
        yield Static("Status", classes="title")
        yield Static("reading device state...", id="status-table", markup=False)
        yield DriftPanel(self.device)  # its own section (appliance/tui/drift_panel.py)
        yield Static("", id="message", classes="message", markup=False)

    def on_mount(self) -> None:
        self.action_refresh_status()
        if self.tech_app.live:
            self.set_interval(REFRESH_S, self.action_refresh_status)

    def action_refresh_status(self) -> None:
        self._collect()

    @work(thread=True, exclusive=True, group="status")
    def _collect(self) -> None:
        status = self.tech_app.status_fn(self.device, self.tech_app.clock())
        self.app.call_from_thread(self._show, status)

    def _show(self, status: DeviceStatus) -> None:
        self.query_one("#status-table", Static).update(render_status(status))
        self.painted = True
        if self.tech_app.exit_after_paint:  # tools/bench_tui.py: start -> first painted status
            self.app.call_after_refresh(self.app.exit)
