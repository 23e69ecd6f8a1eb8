"""The ``telemetry`` block of pipeline.json (written by the image builder from the recipe)."""

from __future__ import annotations

from typing import Literal

import msgspec

from appliance.telemetry.errors import TelemetryError


class TelemetryConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Windows, identity, per-frame policy, byte budget and drift settings.

    ``device_id`` / ``site`` / ``target`` left empty are read from data
    (``<data_dir>/edgekiln/device-id``, ``.../site``) and ``/etc/edgekiln/device.json``.
    """

    window_s: float = 60.0
    topic_prefix: str = "edgekiln"
    device_id: str = ""
    site: str = ""
    target: str = ""
    data_dir: str = "/data"
    device_config: str = "/etc/edgekiln/device.json"
    results: Literal["off", "sample", "all"] = "off"  # per-frame results on the uplink
    results_per_min: float = 6.0  # "sample": at most this many per minute
    budget_mb_day: float = 5.0  # past this (per UTC day) per-frame results stop; an alert says so
    drift_psi: float = 0.2
    drift_min_samples: int = 200
    drift_windows: int = 5  # the sliding window: PSI over the last N windows' predictions

    def check(self) -> None:
        problems = []
        if not 0.05 <= self.window_s <= 3600:
            problems.append(f"window_s {self.window_s} is not within 0.05..3600")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "#+"):
            problems.append(f"topic_prefix {self.topic_prefix!r}: non-empty, no wildcards")
        for name in ("device_id", "site"):
            value = getattr(self, name)
            if any(c in value for c in "#+/") or value != value.strip():
                problems.append(f"{name} {value!r} may not contain '/', '#', '+' or spaces")
        if self.drift_psi <= 0 or self.drift_min_samples < 1 or self.drift_windows < 1:
            problems.append("drift_psi > 0, drift_min_samples >= 1 and drift_windows >= 1")
        if self.budget_mb_day <= 0 or self.results_per_min <= 0:
            problems.append("budget_mb_day and results_per_min must be > 0")
        if problems:
            raise TelemetryError("pipeline config: telemetry: " + "; ".join(problems))
