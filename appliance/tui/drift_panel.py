"""The Status screen's drift line: the latest window's PSI against the threshold, and samples.

A widget of its own (it refreshes itself from ``DATA/edgekiln/telemetry-status.json``, which
the telemetry sink replaces once per window: appliance/telemetry/local_status.py), so the
Status screen only places it.
"""

from __future__ import annotations

from textual.widgets import Static

from appliance.device import Device
from appliance.telemetry.local_status import drift_line, read_status

REFRESH_S = 2.0


class DriftPanel(Static):
    """``drift      [OK] PSI 0.012 / threshold 0.2, 9000 samples (12 s ago)``."""

    def __init__(self, device: Device) -> None:
        super().__init__("drift      reading...", id="drift", markup=False)
        self.device = device

    def on_mount(self) -> None:
        self.refresh_drift()
        if getattr(self.app, "live", False):
            self.set_interval(REFRESH_S, self.refresh_drift)

    def refresh_drift(self) -> None:
        clock = getattr(self.app, "clock", None)
        now = clock() if callable(clock) else 0.0
        self.update(f"{'drift':<10} {drift_line(read_status(self.device.data_dir), now)}")
