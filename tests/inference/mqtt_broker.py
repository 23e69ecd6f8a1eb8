"""A real mosquitto broker on a free local port, and a subscriber that survives its restarts.

The broker keeps sessions on disk (``persistence true``) and the subscriber uses a persistent
session (clean_session=False, QoS 1), so messages published while the subscriber is still
reconnecting after a broker restart are queued for it, not lost: a test then sees exactly what
the device sent.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """``mosquitto -c`` with a generated config; ``stop()``/``start()`` keep port and sessions."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        self.exe = exe
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
            "log_dest stderr\n" + ("user root\n" if os.geteuid() == 0 else "")
            # As root mosquitto switches to user "mosquitto", which cannot write the session
            # file into pytest's private temp dirs; keep the user we run as.
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "broker.log").open("ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "broker.log").read_text(errors="replace")
                pytest.fail(f"mosquitto exited with {self.proc.returncode}: {log[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"mosquitto did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its sessions before exiting
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Subscriber:
    """Collects every message under ``topic/#`` as (topic, decoded JSON)."""

    def __init__(self, port: int, topic: str) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.topic = topic
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{port}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda client, *_: client.subscribe(f"{topic}/#", qos=1)
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = self._on_message
        c.connect_async("127.0.0.1", port, 30)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(10):
            pytest.fail("test subscriber could not subscribe within 10 s")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def frames(self) -> list[int]:
        with self._lock:
            return [int(m["frame"]) for t, m in self.messages if t.endswith("/results")]

    def wait_frames(self, count: int, timeout: float = 30.0) -> list[int]:
        """Distinct frames seen, first occurrences in arrival order, once ``count`` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = first_occurrences(self.frames())
            if len(seen) >= count:
                return seen
            time.sleep(0.05)
        seen = first_occurrences(self.frames())
        pytest.fail(f"only {len(seen)} of {count} results reached the broker in {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_occurrences(values: list[int]) -> list[int]:
    """At-least-once delivery may repeat; keep each value's first arrival."""
    seen: set[int] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
