"""MQTT sink: results and events as JSON to a broker, buffered on data while it is unreachable.

Configured by the ``mqtt`` block of pipeline.json::

    "mqtt": {"host": "broker.site.lan", "port": 1883, "topic": "edgekiln/cam-7",
             "buffer_dir": "/data/edgekiln/mqtt-buffer", "buffer_max_mb": 64}

Mutual TLS adds ``"ca_file"``, ``"cert_file"`` and ``"key_file"`` (PEM paths); a refused
handshake is explained in words (:mod:`~appliance.telemetry.mqtt_tls`) in the log and in
:attr:`MqttSink.last_error`, and records stay buffered.

Results go to ``<topic>/results``, events to ``<topic>/events`` and telemetry windows to
``<topic>/windows``, one JSON object per message, QoS 1 by default (events and windows are
sent at once, results gathered for ``flush_s``).

The frame path only encodes a record and appends it to an in-memory queue. A worker thread
moves records on:

* **online, nothing buffered**: straight to paho (QoS 1, at most ``max_inflight`` unacknowledged
  in flight); paho re-sends them itself after a reconnect;
* **broker down** (or paho's queue full): appended to a :class:`TelemetryBuffer` on the data
  partition: bounded, oldest dropped with a counter, survives a restart;
* **back online**: the buffer is drained in order, a batch at a time; a batch is acknowledged on
  disk only when the broker acknowledged every message of it. While anything is buffered, new
  records join the end of the buffer, so the broker sees them in order.

Delivery is at-least-once: after a crash or power cut the last unacknowledged batch is sent
again. A kill -9 loses what was only in memory (at most ``flush_s`` of results plus paho's
queue); ``close()`` loses nothing: what the broker did not acknowledge is written to the buffer.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgspec

from appliance.inference.errors import ConfigError
from appliance.telemetry.mqtt_tls import explain, is_refusal, warn_if_expired
from appliance.telemetry.telemetry_buffer import Cursor, TelemetryBuffer

log = logging.getLogger(__name__)
_ENCODER = msgspec.json.Encoder()
_RESULT, _EVENT = b"r", b"e"  # first byte of a buffered line: which sub-topic
# Windows are buffered as "e" lines (sent at once, like events) and told apart by their payload:
# an older version rolled back to (docs/decisions.md §10) knows only "r" and "e" and would stop
# at any other first byte; it sends such a line to <topic>/events, where the ingester, which
# reads "type", still stores it as a window.
_WINDOW_PAYLOAD = b'e{"type":"window"'
_KINDS = {"event": _EVENT, "window": _EVENT}
ERROR_REPEAT_S = 60.0  # the same connection error is logged again at most this often


class _PahoErrors(logging.Filter):
    """Catches paho's own error log lines (a refused TLS read) for the sink; prints nothing."""

    def __init__(self, sink: MqttSink) -> None:
        super().__init__()
        self._sink = sink

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Caught exception"):  # a bug in one of our callbacks
            log.error("mqtt: paho: %s", message)
        elif not message.startswith("Client is not connected"):  # said on every loop when down
            self._sink._note_error(message)
        return False


class MqttConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``mqtt`` block of pipeline.json."""

    host: str
    port: int = 1883
    topic: str = "edgekiln"
    client_id: str = ""  # "" lets paho pick one
    qos: int = 1
    keepalive: int = 30
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # set: TLS, the broker's certificate must chain to this CA
    cert_file: str | None = None  # client certificate (mutual TLS), with key_file
    key_file: str | None = None
    buffer_dir: str = "/data/edgekiln/mqtt-buffer"
    buffer_max_mb: float = 64.0
    reconnect_max_s: int = 30  # paho's reconnect backoff ceiling, whole seconds
    max_inflight: int = 100  # unacknowledged QoS 1 messages on the wire (3x the drain rate of 20)

    def check(self) -> None:
        """Refuse values paho would only reject later (or silently misuse)."""
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not 1..65535")
        if self.qos not in (0, 1):
            problems.append(f"qos {self.qos} is not 0 or 1")
        if not self.topic or any(c in self.topic for c in "#+"):
            problems.append(f"topic {self.topic!r} must be non-empty without wildcards")
        if self.buffer_max_mb < 1:
            problems.append(f"buffer_max_mb {self.buffer_max_mb} is below 1")
        if self.max_inflight < 1 or self.keepalive < 5 or self.reconnect_max_s < 1:
            problems.append("max_inflight >= 1, keepalive >= 5 and reconnect_max_s >= 1 are needed")
        if (self.cert_file is None) != (self.key_file is None):
            problems.append("cert_file and key_file go together")
        if self.cert_file is not None and self.ca_file is None:
            problems.append("a client certificate needs ca_file (TLS)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                problems.append(f"{name} {path}: no such file")
        if problems:
            raise ConfigError("pipeline config: mqtt: " + "; ".join(problems))


class MqttSink:
    """Publish records to MQTT; buffer them on disk while the broker cannot be reached."""

    def __init__(self, cfg: MqttConfig, *, flush_s: float = 0.05, batch: int = 256) -> None:
        cfg.check()
        try:
            from paho.mqtt import client as mqtt
            from paho.mqtt.enums import CallbackAPIVersion
        except ImportError as exc:
            raise ConfigError(
                f"pipeline config: mqtt: paho-mqtt is not installed ({exc}); "
                "install edgekiln's 'mqtt' extra or remove the mqtt block"
            ) from None

        self.cfg = cfg
        self._mqtt = mqtt
        self._flush_s = flush_s
        self._batch_size = batch
        self._topics = {_RESULT: f"{cfg.topic}/results", _EVENT: f"{cfg.topic}/events"}
        self._windows_topic = f"{cfg.topic}/windows"
        max_bytes = int(cfg.buffer_max_mb * (1 << 20))
        self.buffer = TelemetryBuffer(
            Path(cfg.buffer_dir), max_bytes=max_bytes, segment_bytes=min(1 << 20, max_bytes // 4)
        )
        self._incoming: deque[bytes] = deque()  # append/popleft are atomic: no lock on frames
        self._direct: deque[tuple[Any, bytes]] = deque()  # (MQTTMessageInfo, line) not yet acked
        self._draining: tuple[Cursor, int, list[Any]] | None = None
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self.published = 0  # messages the broker acknowledged
        self._steps = 0  # completed worker steps (flush waits for one to start after it)
        self._last_error = -1e9
        self._announce = False  # after a (re)connect: say what the buffer holds and dropped
        self._dropped_reported = 0
        self.last_error: str | None = None  # why the last connection attempt failed, in words
        # (message, refused) as logged: the pipeline turns them into events (deque: no lock).
        self.errors: deque[tuple[str, bool]] = deque(maxlen=16)
        self._logged_error: tuple[str, float] = ("", -1e9)
        client = self._make_client(mqtt, CallbackAPIVersion)
        client.connect_async(cfg.host, cfg.port, cfg.keepalive)
        client.loop_start()  # paho's network thread; it reconnects by itself
        self._client = client
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)
        self._thread.start()

    def _make_client(self, mqtt: Any, api: Any) -> Any:
        """A paho client with our limits, TLS and callbacks; not connected yet."""
        cfg = self.cfg
        client = mqtt.Client(api.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv311)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.ca_file is not None:
            try:
                client.tls_set(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"pipeline config: mqtt: TLS files unusable: {exc}") from None
        client.max_inflight_messages_set(cfg.max_inflight)
        # Beyond this paho refuses (MQTT_ERR_QUEUE_SIZE) and the record goes to the disk buffer.
        client.max_queued_messages_set(cfg.max_inflight * 5)
        client.reconnect_delay_set(1, cfg.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        # paho logs a broker's TLS alert (TLS 1.3: it arrives on the first read) only as a log
        # line; a private logger (no handlers, WARNING and up) hands those lines to the sink.
        paho_log = logging.Logger(f"{__name__}.paho", logging.WARNING)
        paho_log.addFilter(_PahoErrors(self))
        client.enable_logger(paho_log)
        warn_if_expired(cfg)
        return client

    # --- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._note_error(f"the broker refused the connection: {reason}")
            return
        log.info("mqtt connected to %s:%d", self.cfg.host, self.cfg.port)
        self.last_error = None
        self._logged_error = ("", -1e9)
        self._announce = True
        self._connected.set()
        self._wake.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._connected.is_set():
            log.warning(
                "mqtt %s:%d lost (%s); buffering on disk", self.cfg.host, self.cfg.port, reason
            )
        self._connected.clear()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` block: the exception is current.
        exc = sys.exc_info()[1]
        self._note_error(f"{type(exc).__name__}: {exc}" if exc else "connection failed")

    def _note_error(self, raw: str) -> None:
        """Record why the link is down; log it in words once (again after ERROR_REPEAT_S)."""
        message = explain(raw, self.cfg)
        self.last_error = message
        now = time.monotonic()
        if message != self._logged_error[0] or now - self._logged_error[1] >= ERROR_REPEAT_S:
            self._logged_error = (message, now)
            log.warning("%s; records stay buffered on data until it connects", message)
            self.errors.append((message, is_refusal(raw)))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        draining = self._draining
        if draining is not None and draining[2] and mid == draining[2][-1].mid:
            self._wake.set()  # the batch's last ack: send the next batch now, not at the next poll

    def _topic(self, line: bytes) -> str:
        return self._windows_topic if line.startswith(_WINDOW_PAYLOAD) else self._topics[line[:1]]

    # --- the frame path ------------------------------------------------------------------

    def publish(self, record: dict[str, object]) -> None:
        kind = _KINDS.get(str(record.get("type")), _RESULT)
        self._incoming.append(kind + _ENCODER.encode(record))
        if kind is not _RESULT:
            self._wake.set()

    # --- the worker ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _run(self) -> None:
        while True:
            closing = self._closing.is_set()
            try:
                self._step()
            except Exception:  # a full disk must not stop the worker: keep trying
                now = time.monotonic()
                if now - self._last_error >= 60:  # once a minute, not every 50 ms
                    self._last_error = now
                    log.exception("mqtt sink: step failed (retrying)")
            self._steps += 1
            if closing:
                return
            self._wake.wait(self._flush_s)
            self._wake.clear()

    def _step(self) -> None:
        """Move records: incoming -> broker or buffer; buffer -> broker; acknowledge batches."""
        self._reap_direct()
        if self._direct and not self._connected.is_set():
            # Keep the order on disk: what was in flight when the link went comes first. paho
            # also re-sends these after the reconnect (at-least-once: duplicates, no loss).
            self.buffer.append([line for _info, line in self._direct])
            self._direct.clear()
        lines = [self._incoming.popleft() for _ in range(len(self._incoming))]
        if lines:
            if self._connected.is_set() and self._draining is None and self.buffer.empty():
                lines = self._send_direct(lines)
            if lines:
                self.buffer.append(lines)
        if self._announce and self._connected.is_set():
            self._announce = False
            self._announce_backlog()
        self._drain()

    def _announce_backlog(self) -> None:
        """After an outage: an event (ahead of the backlog) with what was buffered and dropped."""
        buffered, dropped = len(self.buffer), self.buffer.dropped
        if self.buffer.empty() and dropped == self._dropped_reported:
            return
        new_drops = dropped - self._dropped_reported
        self._dropped_reported = dropped
        event = {
            "type": "event",
            "kind": "uplink_backlog",
            "reason": (
                f"{buffered} records buffered on data while {self.cfg.host}:{self.cfg.port} "
                f"was unreachable are being sent; {new_drops} dropped because the buffer "
                f"({self.cfg.buffer_max_mb:g} MB) was full"
            ),
            "buffered": buffered,
            "dropped": new_drops,
            "dropped_total": dropped,
            "alert": new_drops > 0,
            "ts": round(time.time(), 3),
        }
        line = _EVENT + _ENCODER.encode(event)
        info = self._client.publish(self._topics[_EVENT], line[1:], qos=self.cfg.qos)
        if info.rc != self._mqtt.MQTT_ERR_QUEUE_SIZE:
            self._direct.append((info, line))

    def _send_direct(self, lines: list[bytes]) -> list[bytes]:
        """Hand ``lines`` to paho; return those it refused (queue full, connection gone)."""
        mqtt = self._mqtt
        for i, line in enumerate(lines):
            info = self._client.publish(self._topic(line), line[1:], qos=self.cfg.qos)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                return lines[i:]
            self._direct.append((info, line))  # NO_CONN: paho keeps it and sends on reconnect
        return []

    def _reap_direct(self) -> None:
        while self._direct and self._direct[0][0].is_published():
            self._direct.popleft()
            self.published += 1

    def _drain(self) -> None:
        if self._draining is not None:
            cursor, count, infos = self._draining
            if not all(i.is_published() for i in infos):
                return  # paho re-sends them after a reconnect; wait for the acknowledgements
            self.buffer.ack(cursor, count)
            self.published += count
            self._draining = None
        if not self._connected.is_set() or self.buffer.empty():
            return
        records, cursor = self.buffer.peek(self._batch_size)
        infos = []
        for line in records:
            info = self._client.publish(self._topic(line), line[1:], qos=self.cfg.qos)
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
                break  # paho's queue is full: this batch ends here, the rest comes next time
            infos.append(info)
        if len(infos) < len(records):
            if not infos:
                return
            records, cursor = self.buffer.peek(len(infos))
        self._draining = (cursor, len(records), infos)
        self._wake.set()  # come back soon: the acknowledgements take one round trip

    # --- shutting down -------------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until nothing is in memory or in flight (True), or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        # A step that started after this call has taken everything published before it.
        first = self._steps + 2
        while time.monotonic() < deadline:
            idle = not self._incoming and not self._direct and self._draining is None
            if (
                self._steps >= first
                and idle
                and (not self._connected.is_set() or self.buffer.empty())
            ):
                return True
            self._wake.set()
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Deliver what can be delivered within ``timeout``; buffer the rest on disk."""
        if self._connected.is_set():
            self.flush(timeout)
        self._closing.set()
        self._wake.set()
        self._thread.join()
        self._reap_direct()
        # What paho holds but the broker never acknowledged goes to disk: a restart sends it.
        unacked = [line for info, line in self._direct if not info.is_published()]
        self._direct.clear()
        if unacked:
            self.buffer.append(unacked)
        self._client.disconnect()
        self._client.loop_stop()
        self.buffer.close()
