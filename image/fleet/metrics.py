"""The Prometheus ``/metrics`` endpoint of ``kiln fleet ingest --metrics-port``.

Ingest counters, and per device the latest window's figures as gauges labelled with device,
site and target, so Grafana users can plot and alert on them without reading the database.
"""

from __future__ import annotations

from typing import Any

GAUGES = {
    "fps": "frames per second in the latest window",
    "latency_p95_ms": "p95 of the total per-frame latency in the latest window (ms)",
    "error_rate": "errors per frame in the latest window",
    "top1_mean": "mean top-1 score in the latest window",
    "temp_max_c": "hottest temperature sensor in the latest window (degrees C)",
    "drift_psi": "prediction PSI against the model's reference histogram",
    "last_seen_timestamp_seconds": "end of the latest window (unix time)",
}


class FleetMetrics:
    """Owns a private registry (not the process-global one) and optionally serves it."""

    def __init__(self) -> None:
        import prometheus_client as prom

        self.registry = prom.CollectorRegistry()
        self.messages = prom.Counter(
            "edgekiln_fleet_messages",
            "device messages received, by type and outcome",
            ["type", "outcome"],
            registry=self.registry,
        )
        self.alerts = prom.Counter(
            "edgekiln_fleet_alerts",
            "alert events stored, by kind",
            ["kind", "site"],
            registry=self.registry,
        )
        self.gauges = {
            name: prom.Gauge(
                f"edgekiln_device_{name}",
                text,
                ["device", "site", "target"],
                registry=self.registry,
            )
            for name, text in GAUGES.items()
        }

    def serve(self, port: int, addr: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``addr:port`` from a background thread; returns the server."""
        import prometheus_client as prom

        server, _thread = prom.start_http_server(port, addr=addr, registry=self.registry)
        return server

    def observe(self, m: dict[str, Any], stored: bool) -> None:
        kind = str(m.get("type"))
        self.messages.labels(kind, "stored" if stored else "duplicate").inc()
        if not stored:
            return
        if kind == "event" and m.get("alert"):
            self.alerts.labels(str(m.get("kind")), str(m.get("site"))).inc()
        if kind != "window":
            return
        labels = (str(m.get("device")), str(m.get("site")), str(m.get("target")))
        system = m.get("system") or {}
        values = {
            "fps": m.get("fps"),
            "latency_p95_ms": ((m.get("latency_ms") or {}).get("total") or {}).get("p95"),
            "error_rate": m.get("error_rate"),
            "top1_mean": m.get("top1_mean"),
            "temp_max_c": system.get("temp_max_c"),
            "drift_psi": (m.get("drift") or {}).get("psi"),
            "last_seen_timestamp_seconds": m.get("ts_end"),
        }
        for name, value in values.items():
            if isinstance(value, int | float):
                self.gauges[name].labels(*labels).set(float(value))
