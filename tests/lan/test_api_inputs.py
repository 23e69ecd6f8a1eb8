"""Untrusted input to the API, in-process on loopback: malformed pairing bodies (hypothesis and a
corpus), malformed queries and headers, redaction of the diagnostics."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.api.auth import FailureLimiter
from appliance.api.diag import redact, redact_lines
from appliance.api.server import ApiConfig, ApiServer
from appliance.device import Device, DeviceConfig


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("dev")
    device = Device(DeviceConfig(product="p", target="t"), root / "data", demo=True)
    # a limiter that never locks out: this module sends many bad requests on purpose
    limiter = FailureLimiter(max_failures=10**9)
    srv = ApiServer(ApiConfig(device, "127.0.0.1", 0, limiter=limiter, stall_timeout_s=5))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def raw(server: ApiServer, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(*server.server_address[:2], timeout=10, context=ctx)  # type: ignore[misc]
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.headers.get("Content-Type") == "application/json":
            json.loads(data)  # every error is well-formed JSON
        return resp.status
    finally:
        conn.close()


CORPUS = [
    b"",
    b"null",
    b"[]",
    b'"code"',
    b"{",
    b'{"code": null}',
    b'{"code": 12345678}',
    b'{"code": "' + b"9" * 5000 + b'"}',
    b'{"code": "\\u0000"}',
    b"\xff\xfe\x00",
]


@pytest.mark.parametrize("body", CORPUS)
def test_malformed_pairing_bodies_are_refused(server: ApiServer, body: bytes) -> None:
    assert raw(server, "POST", "/v1/pair", body, {}) in (400, 403, 413)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=300))
def test_random_pairing_bodies_never_pair_or_crash(server: ApiServer, body: bytes) -> None:
    assert raw(server, "POST", "/v1/pair", body, {}) in (400, 403, 413)


def test_headers_and_queries(server: ApiServer) -> None:
    token = server.tokens.issue("t")
    auth = {"Authorization": f"Bearer {token}"}
    assert raw(server, "GET", "/v1/events?offset=x", b"", auth) == 400
    assert raw(server, "GET", "/v1/events?offset=-5&limit=999999", b"", auth) == 200
    assert raw(server, "GET", "/v1/nope", b"", auth) == 404
    assert raw(server, "GET", "/v1/status", b"", {"Authorization": "Basic abc"}) == 401
    assert raw(server, "GET", "/v1/status", b"", {"Authorization": f"bearer  {token}"}) == 200
    assert raw(server, "PUT", "/v1/bundle", b"", {**auth, "Content-Length": "abc"}) in (400, 411)


@pytest.mark.parametrize("length", ["-1", "abc", "1e9", " -5"])
def test_bad_content_length_is_refused_before_reading(server: ApiServer, length: str) -> None:
    """``Content-Length: -1`` once made the pairing endpoint read to EOF into memory."""
    token = server.tokens.issue("t")
    headers = {"Content-Length": length, "Authorization": f"Bearer {token}"}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    host, port = server.server_address[:2]
    for method, path in (("POST", "/v1/pair"), ("PUT", "/v1/bundle")):
        sock = ctx.wrap_socket(socket.create_connection((str(host), int(port)), 10))
        try:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
            sock.sendall(b"x" * 1000)  # the connection stays open: only a length check answers
            assert sock.recv(64).startswith(b"HTTP/1.1 400")
        finally:
            sock.close()


def test_redaction() -> None:
    doc = {
        "mqtt": {"password": "x", "host": "h", "tls": {"key_file": "/k"}},
        "list": [{"token": 1}],
    }
    assert redact(doc) == {
        "mqtt": {"password": "<redacted>", "host": "h", "tls": {"key_file": "<redacted>"}},
        "list": [{"token": "<redacted>"}],
    }
    text = redact_lines("[WiFi]\nSSID=plant\nPSK=secret123\nAddress=10.0.0.2/24\n")
    assert "secret123" not in text and "SSID=plant" in text and "PSK=<redacted>" in text


def test_device_files_are_private(server: ApiServer) -> None:
    api = Path(server.config.api_dir)
    assert (api / "api-key.pem").stat().st_mode & 0o077 == 0
    assert (api / "tokens-v1.json").stat().st_mode & 0o077 == 0
