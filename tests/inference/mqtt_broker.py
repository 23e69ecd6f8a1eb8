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

    def __init__(
        self,
        workdir: Path,
        tls: tuple[Path, Path, Path] | None = None,
        *,
        client_certs: bool = False,
        acl: str | None = None,
    ) -> None:
        """``tls`` = (CA, certificate, key): a second listener, ``tls_port``, speaks TLS.

        ``client_certs``: that listener requires a client certificate chaining to the CA and takes
        its common name as the username (mutual TLS). ``acl``: the text of an ACL file (mosquitto
        syntax: lines before any ``user`` apply to anonymous clients, i.e. the plain listener).
        """
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
        self.tls_port = 0
        if tls is not None:
            self.tls_port = free_port()
            ca, cert, key = tls
            with self.conf.open("a") as f:
                f.write(
                    f"listener {self.tls_port} 127.0.0.1\n"
                    f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
                )
                if client_certs:
                    f.write("require_certificate true\nuse_identity_as_username true\n")
        if acl is not None:
            (self.dir / "acl").write_text(acl)
            with self.conf.open("a") as f:
                f.write(f"acl_file {self.dir / 'acl'}\n")
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


def make_ca(directory: Path, name: str) -> tuple[Path, Any, Any]:
    """A self-signed CA: (PEM path, certificate, private key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    path = directory / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def write_pem_pair(stem: Path, cert: Any, key: Any) -> tuple[Path, Path]:
    """Write ``cert`` to ``<stem>.pem`` and its unencrypted key to ``<stem>.key``; both paths."""
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = stem.with_name(stem.name + ".pem"), stem.with_name(stem.name + ".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def make_server_cert(directory: Path, ca_cert: Any, ca_key: Any) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost signed by the CA: (certificate PEM, key PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return write_pem_pair(directory / "server", cert, key)


def make_client_cert(
    directory: Path,
    ca_cert: Any,
    ca_key: Any,
    name: str,
    *,
    expired: bool = False,
) -> tuple[Path, Path]:
    """A client certificate (common name ``name``) signed by the CA: (certificate PEM, key PEM).

    ``expired``: valid for one day that ended yesterday.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=2 if expired else 1)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=30)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return write_pem_pair(directory / name, cert, key)
