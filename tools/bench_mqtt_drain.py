"""Benchmark: how fast the MQTT sink drains its on-disk backlog after an outage.

A real mosquitto on a free local port. Baseline: the same N records published straight from
memory with paho (QoS 1, same in-flight window), waiting for every PUBACK. Measured: the sink
buffers N records while the broker is down (time to disk), then the broker starts and the
backlog drains (time until the buffer is empty); the subscriber checks order.

    .venv/bin/python tools/bench_mqtt_drain.py --records 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink  # noqa: E402
from tests.inference.mqtt_broker import Broker, Subscriber  # noqa: E402

RECORD = {
    "type": "result",
    "frame": 0,
    "ts": 1.0,
    "top": [{"label": "ok", "index": 1, "score": 0.9}] * 3,
    "ms": {"capture": 0.1, "pre": 0.1, "infer": 1.0, "post": 0.1, "publish": 0.01},
}


def baseline(port: int, n: int, inflight: int) -> float:
    """Seconds for paho alone to publish ``n`` records (QoS 1) and get every PUBACK."""
    import msgspec
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(inflight)
    c.connect("127.0.0.1", port)
    c.loop_start()
    enc = msgspec.json.Encoder()
    t0 = time.perf_counter()
    infos = []
    for i in range(n):
        infos.append(c.publish("bench/base/results", enc.encode({**RECORD, "frame": i}), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    took = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=20000)
    args = ap.parse_args()
    n = args.records
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        try:
            cfg = MqttConfig(
                host="127.0.0.1", port=broker.port, topic="bench/sink",
                buffer_dir=str(Path(tmp) / "buf"), reconnect_max_s=1,
            )  # fmt: skip
            base = baseline(broker.port, n, cfg.max_inflight)
            sub = Subscriber(broker.port, "bench/sink")
            broker.stop()
            sink = MqttSink(cfg)
            t0 = time.perf_counter()
            for i in range(n):
                sink.publish({**RECORD, "frame": i})
            if not sink.flush(120):
                raise SystemExit("the sink did not buffer the records within 120 s")
            to_disk = time.perf_counter() - t0
            size = sum(p.stat().st_size for p in Path(cfg.buffer_dir).glob("seg-*.log"))
            broker.start()
            while not sink.connected:
                time.sleep(0.005)
            t1 = time.perf_counter()
            while not sink.buffer.empty():
                time.sleep(0.005)
            drain = time.perf_counter() - t1
            in_order = sub.wait_frames(n, timeout=120) == list(range(n))
            sink.close()
            sub.close()
        finally:
            broker.stop()
    print(f"{n} records of {size / n:.0f} B (JSON + 1 B topic tag + newline)")
    print(f"{'':28} {'s':>7} {'records/s':>10} {'vs paho alone':>14}")
    print(f"{'paho alone (from memory)':28} {base:7.2f} {n / base:10.0f} {1.0:14.2f}")
    print(f"{'sink: buffer to disk':28} {to_disk:7.2f} {n / to_disk:10.0f} {base / to_disk:14.2f}")
    print(f"{'sink: drain backlog':28} {drain:7.2f} {n / drain:10.0f} {base / drain:14.2f}")
    print(f"subscriber saw every record in order: {in_order}")
    return 0 if in_order else 1


if __name__ == "__main__":
    sys.exit(main())
