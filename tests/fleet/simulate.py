"""Simulated devices for the fleet tests: real windows (the device's own aggregator), real MQTT.

Each device runs :class:`~appliance.telemetry.uplink.TelemetrySink` over synthetic per-frame
records at a simulated clock (the window format is the device's, not a copy), then publishes
the messages with its own paho client to ``edgekiln/<site>/<device>/<kind>``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.identity import Identity
from appliance.telemetry.system import SystemSampler
from appliance.telemetry.uplink import TelemetrySink
from tests.telemetry.helpers import SimClock

LABELS = {"ok": 0.27, "scratch": 0.23, "crack": 0.25, "missing_hole": 0.25}
WRONG = {"ok": 0.85, "scratch": 0.05, "crack": 0.05, "missing_hole": 0.05}
START = 1_800_000_000.0


class _Collect:
    def __init__(self) -> None:
        self.messages: list[dict[str, object]] = []

    def publish(self, record: dict[str, object]) -> None:
        self.messages.append(record)

    def close(self) -> None:
        pass


def device_windows(
    index: int, tmp: Path, *, kind: str = "normal", windows: int = 4, window_s: float = 10.0
) -> list[dict[str, object]]:
    """The messages device ``index`` sends over ``windows`` windows; ``kind`` picks a deviation."""
    rng = random.Random(index)
    name = f"dev-{index:03d}"
    site = f"site-{index % 4}"
    sys_root = tmp / "sys" / name / "class/thermal/thermal_zone0"
    sys_root.mkdir(parents=True)
    temp = 88.0 if kind == "hot" else rng.gauss(55.0, 1.5)
    (sys_root / "temp").write_text(f"{int(temp * 1000)}\n")
    (sys_root / "type").write_text("soc\n")
    fps = 12.0 if kind == "slow" else rng.gauss(30.0, 0.3)
    infer = 60.0 if kind == "slow" else rng.gauss(6.0, 0.2)
    labels = WRONG if kind == "wrong" else LABELS
    score = 0.55 if kind == "wrong" else 0.9
    clock = SimClock(START, fps)
    out = _Collect()
    ident = Identity(name, site, "generic-x86-64", "1.4.0", "a")
    sampler = SystemSampler(tmp, sys_root=tmp / "sys" / name)
    tele = TelemetrySink(
        TelemetryConfig(window_s=window_s), ident, out, clock=clock, sampler=sampler, timer=False
    )
    names, weights = list(labels), list(labels.values())
    frame = 0
    while clock() < START + windows * window_s - 1e-6:
        label = rng.choices(names, weights)[0]
        tele.publish(
            {
                "type": "result",
                "frame": frame,
                "top": [{"label": label, "score": min(1.0, rng.gauss(score, 0.05))}],
                "model": "inspect-primary",
                "version": "1.0.0",
                "backend": "onnxruntime",
                "degraded": False,
                "ms": {"capture": 1.0, "pre": 0.8, "infer": rng.gauss(infer, 0.3), "post": 0.1},
            }
        )
        frame += 1
        clock.tick()
    tele.roll(START + windows * window_s + 1e-3)
    return out.messages


def fleet_messages(tmp: Path, count: int = 100) -> list[dict[str, object]]:
    """``count`` devices' messages; devices 7, 42 and 77 are slow, wrong and hot."""
    kinds = {7: "slow", 42: "wrong", 77: "hot"}
    msgs: list[dict[str, object]] = []
    for i in range(count):
        msgs += device_windows(i, tmp, kind=kinds.get(i, "normal"))
    return msgs


def publish_all(port: int, messages: list[dict[str, Any]]) -> None:
    """Publish ``messages`` (QoS 1) from one real MQTT client per device; wait for every ack."""
    import json

    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    by_device: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        by_device.setdefault(str(m["device"]), []).append(m)
    pending = []
    conns = []
    for device, msgs in by_device.items():
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{device}")
        c.connect("127.0.0.1", port)
        c.loop_start()
        conns.append(c)
        for m in msgs:
            kind = "windows" if m["type"] == "window" else "events"
            topic = f"edgekiln/{m['site']}/{device}/{kind}"
            pending.append(c.publish(topic, json.dumps(m), qos=1))
    for info in pending:
        info.wait_for_publish(30)
    for c in conns:
        c.disconnect()
        c.loop_stop()
