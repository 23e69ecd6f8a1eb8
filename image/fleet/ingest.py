"""``kiln fleet ingest``: device messages from an MQTT 5 shared subscription into the store.

docs/decisions.md §17: several ingesters split one broker's load with a shared subscription
(``$share/<group>/edgekiln/+/+/windows`` and ``.../events``): the broker hands each message to
one member of the group. Each ingester keeps a persistent session (clean start off, a session
expiry), so messages that arrive while it is down wait at the broker. A message is acknowledged
(PUBACK, manual) only after its row is committed, so a killed ingester loses nothing: what it
had not acknowledged is delivered again, and the insert by message id stores it once.

Messages are committed in batches (up to ``BATCH``, at least every ``FLUSH_S``), then
acknowledged: one commit (one fsync on PostgreSQL) per batch instead of per message. The
client's MQTT 5 Receive Maximum lets the broker keep that many unacknowledged in flight.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from image.fleet.errors import FleetError
from image.fleet.metrics import FleetMetrics
from image.fleet.store import Store

log = logging.getLogger(__name__)
SESSION_EXPIRY_S = 7 * 86400  # messages wait a week at the broker for a stopped ingester
BATCH = 500
FLUSH_S = 0.02


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise FleetError(f"--broker {url}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        tls = parts.scheme in ("mqtts", "ssl")
        return cls(parts.hostname, parts.port or (8883 if tls else 1883), tls)


class Ingester:
    """One member of the ingest group; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        broker: BrokerUrl,
        store: Store,
        *,
        client_id: str,
        group: str = "kiln-fleet",
        prefix: str = "edgekiln",
        ca_file: str | None = None,
        metrics: FleetMetrics | None = None,
    ) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.store = store
        self.metrics = metrics
        self.broker = broker
        self.topics = [f"$share/{group}/{prefix}/+/+/{kind}" for kind in ("windows", "events")]
        self.stored = 0
        self.duplicates = 0
        self.rejected = 0
        self.subscribed = threading.Event()
        self.failure: str | None = None
        self._stop: threading.Event | None = None
        self._lock = threading.Lock()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.manual_ack_set(True)
        if broker.tls:
            c.tls_set(ca_certs=ca_file)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(1, 10)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = BATCH * 2
        self._pending: list[tuple[dict[str, Any], int, int]] = []
        self.last_message = time.monotonic()
        self._connect_props = props
        self.client = c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("fleet ingest: broker refused the connection: %s", reason)
            return
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        log.info("fleet ingest: subscribed to %s", ", ".join(self.topics))
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            message = json.loads(msg.payload)
            if not isinstance(message, dict) or not message.get("id") or not message.get("device"):
                raise ValueError("not a device message with id and device")
        except ValueError as exc:
            self.rejected += 1
            log.warning("fleet ingest: %s: dropped unreadable message (%s)", msg.topic, exc)
            client.ack(msg.mid, msg.qos)
            return
        with self._lock:
            self.last_message = time.monotonic()
            self._pending.append((message, msg.mid, msg.qos))
            full = len(self._pending) >= BATCH
        if full:
            self.flush()

    def flush(self) -> None:
        """Commit the pending messages in one transaction, then acknowledge them."""
        with self._lock:
            batch, self._pending = self._pending, []
            if not batch or self.failure is not None:
                return
            try:
                results = self.store.insert_many([m for m, _mid, _qos in batch])
            except Exception as exc:  # not acknowledged: the broker keeps them for the next start
                log.exception("fleet ingest: storing %d messages failed; stopping", len(batch))
                self.failure = f"storing into {self.store.url} failed: {exc}"
                if self._stop is not None:
                    self._stop.set()
                return
        for (message, mid, qos), stored in zip(batch, results, strict=True):
            if stored:
                self.stored += 1
            else:
                self.duplicates += 1
            if self.metrics is not None:
                self.metrics.observe(message, stored)
            self.client.ack(mid, qos)

    def retire(self, quiet_s: float = 2.0) -> None:
        """Store what waits in this member's session, then end the session at the broker.

        A stopped member of a shared group keeps receiving its share into its session; this
        drains that share (until ``quiet_s`` without a message) and disconnects with a session
        expiry of 0, so the broker forgets the member and gives the others everything.
        """
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.1):
                if time.monotonic() - self.last_message > quiet_s and self.subscribed.is_set():
                    stop.set()

        threading.Thread(target=watch, daemon=True).start()
        end = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        end.SessionExpiryInterval = 0
        self.run(stop, disconnect_properties=end)

    def run(self, stop: threading.Event, disconnect_properties: Any = None) -> None:
        """Connect, ingest until ``stop`` is set, disconnect (the session stays at the broker).

        A message that cannot be stored stops the ingester (FleetError) without acknowledging
        it: the broker keeps it in the session, and the next start stores it.
        """
        self._stop = stop
        try:
            self.client.connect(
                self.broker.host,
                self.broker.port,
                30,
                clean_start=False,
                properties=self._connect_props,
            )
        except OSError as exc:
            raise FleetError(
                f"broker {self.broker.host}:{self.broker.port}: cannot connect ({exc}); "
                "check --broker and that the broker runs"
            ) from None
        self.client.loop_start()
        try:
            while not stop.wait(FLUSH_S):
                self.flush()
            self.flush()
        finally:
            self.client.disconnect(properties=disconnect_properties)
            self.client.loop_stop()
        if self.failure is not None:
            raise FleetError(f"fleet ingest: {self.failure}; fix the database and start again")
