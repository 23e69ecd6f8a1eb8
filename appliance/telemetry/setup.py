"""Build the telemetry uplink a pipeline config asks for (the MQTT sink behind a TelemetrySink)."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from appliance.inference.errors import ConfigError
from appliance.inference.package import load_package
from appliance.telemetry import identity
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
from appliance.telemetry.uplink import TelemetrySink

log = logging.getLogger(__name__)


def references(*packages: str | None) -> tuple[dict[str, dict[str, float]], str | None]:
    """``{package name: reference.histogram}`` of the packages that have one, and the first name."""
    out: dict[str, dict[str, float]] = {}
    first: str | None = None
    for root in packages:
        if root is None:
            continue
        try:
            manifest = load_package(Path(root)).manifest
        except Exception as exc:  # the chain reports a broken package; telemetry carries on
            log.warning("telemetry: %s: no reference histogram for drift (%s)", root, exc)
            continue
        first = first or manifest.name
        if manifest.reference is not None and manifest.reference.histogram:
            out[manifest.name] = dict(manifest.reference.histogram)
    return out, first


def telemetry_sink(
    cfg: TelemetryConfig, mqtt: MqttConfig | None, model: str, fallback: str | None
) -> TelemetrySink:
    """The uplink for ``cfg``: MQTT under ``<topic_prefix>/<site>/<device>``, windows and drift."""
    if mqtt is None:
        raise ConfigError("pipeline config: telemetry needs an mqtt block (the broker to send to)")
    cfg.check()
    ident = identity.resolve(cfg)
    topic = ident.topic(cfg.topic_prefix)
    client_id = mqtt.client_id or f"edgekiln-{ident.device}"
    uplink = MqttSink(msgspec.structs.replace(mqtt, topic=topic, client_id=client_id))
    refs, primary = references(model, fallback)
    return TelemetrySink(cfg, ident, uplink, references=refs, primary_model=primary)
