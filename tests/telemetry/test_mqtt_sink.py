"""The MQTT sink against a real mosquitto broker: online, outages, restarts, a full buffer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from appliance.inference.chain import Event
from appliance.inference.errors import ConfigError
from appliance.inference.pipeline import Pipeline, PipelineConfig, load_config
from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
from tests.inference.mqtt_broker import (
    Broker,
    Subscriber,
    make_ca,
    make_client_cert,
    make_server_cert,
)

pytestmark = pytest.mark.integration
TOPIC = "edgekiln/test-cam"


@pytest.fixture(autouse=True)
def _no_worker_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The sink's worker logs (and survives) exceptions; in these tests there must be none."""
    yield
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "mqtt" in r.name]
    assert not errors, errors[0].getMessage()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.port, TOPIC)
    yield s
    s.close()


def config(broker: Broker, tmp_path: Path, **kw: object) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1",
        port=broker.port,
        topic=TOPIC,
        buffer_dir=str(tmp_path / "data" / "mqtt-buffer"),
        reconnect_max_s=1,
        **kw,  # type: ignore[arg-type]
    )


def wait_for(cond: object, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def result(i: int, pad: int = 0) -> dict[str, object]:
    return {"type": "result", "frame": i, "top": [{"label": "ok", "score": 0.9}], "pad": "x" * pad}


def test_results_and_events_reach_the_broker_as_json_in_order(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    sink = MqttSink(config(broker, tmp_path))
    wait_for(lambda: sink.connected, what="the sink to connect")
    for i in range(100):
        sink.publish(result(i))
    sink.publish({"type": "event", "kind": "degraded", "reason": "x", "alert": True})
    assert subscriber.wait_frames(100) == list(range(100))
    wait_for(lambda: any(t.endswith("/events") for t, _ in subscriber.messages), what="event")
    topic, event = next(m for m in subscriber.messages if m[0].endswith("/events"))
    assert topic == f"{TOPIC}/events" and event["kind"] == "degraded"
    first = next(m for t, m in subscriber.messages if t == f"{TOPIC}/results")
    assert first == json.loads(json.dumps(result(0)))
    sink.close()
    assert sink.published == 101
    assert sink.buffer.empty() and sink.buffer.dropped == 0


def test_broker_down_buffers_on_disk_and_drains_in_order_when_it_returns(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    broker.stop()
    sink = MqttSink(config(broker, tmp_path))
    for i in range(300):
        sink.publish(result(i))
    assert sink.flush()
    assert len(sink.buffer) == 300 and not sink.connected
    segments = list((tmp_path / "data" / "mqtt-buffer").glob("seg-*.log"))
    assert sum(p.read_bytes().count(b"\n") for p in segments) == 300
    broker.start()
    assert subscriber.wait_frames(300) == list(range(300))
    wait_for(sink.buffer.empty, what="the buffer to empty")
    sink.close()
    events = [m for t, m in subscriber.messages if t == f"{TOPIC}/events"]
    assert [(e["kind"], e["buffered"], e["dropped"], e["alert"]) for e in events] == [
        ("uplink_backlog", 300, 0, False)
    ]


def test_outage_mid_stream_keeps_order_and_loses_nothing(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    sink = MqttSink(config(broker, tmp_path))
    wait_for(lambda: sink.connected, what="the sink to connect")
    for i in range(100):
        sink.publish(result(i))
    subscriber.wait_frames(100)
    broker.stop()
    wait_for(lambda: not sink.connected, what="the sink to notice")
    for i in range(100, 200):
        sink.publish(result(i))
        time.sleep(0.001)
    assert sink.flush()
    assert len(sink.buffer) >= 100
    broker.start()
    for i in range(200, 300):  # frames keep coming while the backlog drains
        sink.publish(result(i))
        time.sleep(0.001)
    assert subscriber.wait_frames(300) == list(range(300))
    sink.close()
    assert sink.buffer.empty()


def test_the_buffer_survives_a_killed_device_process(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    broker.stop()
    cfg = config(broker, tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal
        from appliance.telemetry.mqtt_sink import MqttConfig, MqttSink
        sink = MqttSink(MqttConfig(host="127.0.0.1", port={cfg.port}, topic="{TOPIC}",
                                   buffer_dir="{cfg.buffer_dir}", reconnect_max_s=1))
        for i in range(50):
            sink.publish({{"type": "result", "frame": i}})
        assert sink.flush()
        sink.buffer.sync()  # the periodic fsync would do this within a second
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr.decode()
    broker.start()
    sink = MqttSink(cfg)  # the restarted agent
    assert subscriber.wait_frames(50) == list(range(50))
    sink.close()


def test_a_full_buffer_drops_the_oldest_and_counts_them(
    broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    broker.stop()
    sink = MqttSink(config(broker, tmp_path, buffer_max_mb=1))
    total = 2000  # ~1.1 KB each: about twice the 1 MiB buffer
    for i in range(total):
        sink.publish(result(i, pad=1000))
    assert sink.flush()
    dropped = sink.buffer.dropped
    assert dropped > 0 and dropped + len(sink.buffer) == total
    broker.start()
    kept = total - dropped
    assert subscriber.wait_frames(kept) == list(range(dropped, total))
    sink.close()
    assert (
        json.loads((tmp_path / "data" / "mqtt-buffer" / "state.json").read_bytes())["dropped"]
        == dropped
    )
    wait_for(lambda: any(t.endswith("/events") for t, _ in subscriber.messages), what="event")
    (event,) = [m for t, m in subscriber.messages if t.endswith("/events")]
    assert event["kind"] == "uplink_backlog" and event["alert"] is True
    assert event["dropped"] == dropped and event["buffered"] == kept


def test_close_buffers_what_the_broker_did_not_acknowledge(tmp_path: Path) -> None:
    # Nothing listens on this port: every record must end up on disk, none in memory only.
    broker = Broker(tmp_path / "never-started")
    sink = MqttSink(config(broker, tmp_path))
    for i in range(20):
        sink.publish(result(i))
    sink.close()
    again = MqttSink(config(broker, tmp_path))
    records, _ = again.buffer.peek(100)
    assert [json.loads(r[1:])["frame"] for r in records] == list(range(20))
    again.close()


def test_pipeline_publishes_its_results_over_mqtt(
    broker: Broker, subscriber: Subscriber, tiny_package: Path, tmp_path: Path
) -> None:
    path = tmp_path / "pipeline.json"
    path.write_text(
        json.dumps(
            {
                "model": str(tiny_package),
                "source": f"npz:{tiny_package}/reference.npz",
                "sink": str(tmp_path / "results.jsonl"),
                "mqtt": {
                    "host": "127.0.0.1",
                    "port": broker.port,
                    "topic": TOPIC,
                    "buffer_dir": str(tmp_path / "buf"),
                    "reconnect_max_s": 1,
                },
            }
        )
    )
    cfg = load_config(path)
    pipe = Pipeline(cfg)
    wait_for(lambda: pipe.sink.sinks[1].connected, what="the sink to connect")  # type: ignore[attr-defined]
    stats = pipe.run()
    assert subscriber.wait_frames(stats.frames) == list(range(stats.frames))
    wait_for(lambda: any(m.get("kind") == "loaded" for _, m in subscriber.messages), what="event")
    file_lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["type"] == "result" for x in file_lines) == stats.frames


def test_tls_to_a_broker_whose_certificate_chains_to_the_configured_ca(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_path, ca_cert, ca_key = make_ca(pki, "site-ca")
    other_ca, _, _ = make_ca(pki, "other-ca")
    cert, key = make_server_cert(pki, ca_cert, ca_key)
    broker = Broker(tmp_path / "broker", tls=(ca_path, cert, key))
    broker.start()
    sub = Subscriber(broker.port, TOPIC)  # the plain listener, for the test's eyes only
    try:
        good = MqttSink(
            msgspec.structs.replace(
                config(broker, tmp_path), port=broker.tls_port, ca_file=str(ca_path)
            )
        )
        wait_for(lambda: good.connected, what="the TLS connection")
        for i in range(20):
            good.publish(result(i))
        assert sub.wait_frames(20) == list(range(20))
        good.close()
        # A broker certificate from another CA is refused: records stay buffered, none leak.
        bad_cfg = msgspec.structs.replace(
            config(broker, tmp_path / "bad"), port=broker.tls_port, ca_file=str(other_ca)
        )
        bad = MqttSink(bad_cfg)
        bad.publish(result(99))
        assert bad.flush()
        time.sleep(1.5)  # at least one reconnect attempt
        assert not bad.connected and len(bad.buffer) == 1
        assert "the broker's certificate does not verify against ca_file" in (bad.last_error or "")
        bad.close()
        assert 99 not in sub.frames()
    finally:
        sub.close()
        broker.stop()


DEVICE_CN = "cam-7"
# Anonymous clients (the test's subscriber on the plain listener) may read; the device, known by
# its certificate's common name, may write its own topic and nothing else.
ACL = f"topic read edgekiln/#\n\nuser {DEVICE_CN}\ntopic write {TOPIC}/#\n"


def test_mutual_tls_right_client_certificate_publishes_others_are_refused_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_path, ca_cert, ca_key = make_ca(pki, "site-ca")
    _, rogue_cert, rogue_key = make_ca(pki, "rogue-ca")
    server = make_server_cert(pki, ca_cert, ca_key)
    good = make_client_cert(pki, ca_cert, ca_key, DEVICE_CN)
    foreign = make_client_cert(pki, rogue_cert, rogue_key, "cam-foreign")
    expired = make_client_cert(pki, ca_cert, ca_key, "cam-expired", expired=True)
    broker = Broker(tmp_path / "broker", tls=(ca_path, *server), client_certs=True, acl=ACL)
    broker.start()
    try:
        sub = Subscriber(broker.port, TOPIC)
    except BaseException:
        broker.stop()
        raise
    buffer_dir = tmp_path / "data" / "mqtt-buffer"  # one device: the same buffer throughout

    def sink(cert: tuple[Path, Path] | None) -> MqttSink:
        files = {"cert_file": str(cert[0]), "key_file": str(cert[1])} if cert else {}
        return MqttSink(
            MqttConfig(
                host="localhost",  # the server certificate names localhost and 127.0.0.1
                port=broker.tls_port,
                topic=TOPIC,
                ca_file=str(ca_path),
                buffer_dir=str(buffer_dir),
                reconnect_max_s=1,
                **files,  # type: ignore[arg-type]
            )
        )

    refusals = [
        (None, "requires a client certificate and this device sent none: set cert_file"),
        (foreign, r"does not trust this device's client certificate cert_file .*cam-foreign"),
        (expired, r"refused this device's client certificate .*cam-expired.* as expired"),
    ]
    frame = 0
    try:
        for cert, reason in refusals:
            device = sink(cert)
            for _ in range(10):
                device.publish(result(frame))
                frame += 1
            # The first error may be a bare reset (the alert races our CONNECT); the next
            # attempt (1 s later) reads the alert itself.
            wait_for(
                lambda d=device, r=reason: re.search(r, d.last_error or "") is not None,
                what=f"the refusal ({reason})",
            )
            assert device.flush()
            assert re.search(reason, device.last_error or ""), device.last_error
            assert not device.connected and len(device.buffer) == frame
            device.close()
            assert any(re.search(reason, r.getMessage()) for r in caplog.records), reason
        assert sub.frames() == []
        # The expired certificate was also flagged by the device's own clock when loaded.
        assert any("expired at" in r.getMessage() for r in caplog.records)
        # The device gets its proper certificate: all 30 refused records arrive, in order.
        device = sink(good)
        wait_for(lambda: device.connected, what="the mutual-TLS connection")
        assert device.last_error is None
        for _ in range(10):
            device.publish(result(frame))
            frame += 1
        assert sub.wait_frames(frame) == list(range(frame))
        wait_for(device.buffer.empty, what="the buffer to drain")
        device.close()
        log = (broker.dir / "broker.log").read_text(errors="replace")
        assert f"u'{DEVICE_CN}'" in log  # the broker saw the certificate's name as the user
    finally:
        sub.close()
        broker.stop()


def test_pipeline_turns_a_refused_uplink_into_an_alert_event_and_keeps_every_result(
    tiny_package: Path, tmp_path: Path
) -> None:
    import threading

    from appliance.inference.package import load_package
    from appliance.inference.sources import ArraySource
    from appliance.telemetry.telemetry_buffer import TelemetryBuffer

    pki = tmp_path / "pki"
    pki.mkdir()
    ca_path, ca_cert, ca_key = make_ca(pki, "site-ca")
    server = make_server_cert(pki, ca_cert, ca_key)
    broker = Broker(tmp_path / "broker", tls=(ca_path, *server), client_certs=True, acl=ACL)
    broker.start()
    buffer_dir = tmp_path / "data" / "mqtt-buffer"
    cfg = PipelineConfig(
        model=str(tiny_package),
        source="memory",
        backends=["onnxruntime"],
        sink=str(tmp_path / "results.jsonl"),
        mqtt=MqttConfig(  # no client certificate: the broker refuses every connection
            host="127.0.0.1",
            port=broker.tls_port,
            topic=TOPIC,
            ca_file=str(ca_path),
            buffer_dir=str(buffer_dir),
            reconnect_max_s=1,
        ),
    )
    images, _ = load_package(tiny_package).load_reference()
    stop = threading.Event()
    timer = threading.Timer(30, stop.set)  # the test's own limit: the event must come first

    def on_event(event: Event) -> None:
        if event.kind == "uplink_error" and event.alert:
            stop.set()

    timer.start()
    try:
        pipe = Pipeline(cfg, source=ArraySource("memory", images, loops=0, fps=200))
        stats = pipe.run(stop, on_event=on_event)
    finally:
        timer.cancel()
        broker.stop()
    event = next(e for e in pipe.events if e.kind == "uplink_error" and e.alert)
    assert "requires a client certificate" in event.reason
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sum(r["type"] == "result" for r in lines) == stats.frames > 0
    assert any(r.get("kind") == "uplink_error" and r["alert"] for r in lines)
    buffered = TelemetryBuffer(buffer_dir)
    records, _ = buffered.peek(100_000)
    results = [json.loads(r[1:]) for r in records if r[:1] == b"r"]
    assert [r["frame"] for r in results] == list(range(stats.frames))  # nothing lost
    buffered.close()


def test_tls_files_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ca_file .*: no such file"):
        MqttConfig(host="h", ca_file=str(tmp_path / "missing.pem")).check()
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        MqttConfig(host="h", ca_file=__file__, cert_file=__file__).check()
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="TLS files unusable"):
        MqttSink(MqttConfig(host="127.0.0.1", ca_file=str(garbage), buffer_dir=str(tmp_path / "b")))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"host": "h", "qos": 2}, "qos 2 is not 0 or 1"),
        ({"host": "h", "port": 0}, "port 0"),
        ({"host": "h", "topic": "a/#"}, "without wildcards"),
        ({"host": "h", "buffer_max_mb": 0.5}, "buffer_max_mb"),
        ({"port": 1883}, "host"),
        ({"host": "h", "colour": "red"}, "colour"),
    ],
)
def test_bad_mqtt_blocks_are_refused_naming_the_file(
    tmp_path: Path, block: dict[str, object], message: str
) -> None:
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps({"model": "m", "source": "s", "mqtt": block}))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_pipeline_config_without_mqtt_still_parses(tmp_path: Path) -> None:
    cfg = PipelineConfig(model="m", source="s")
    assert cfg.mqtt is None
