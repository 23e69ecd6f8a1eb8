"""HTTPS to one device with its certificate pinned: checked after the handshake, before any
byte of the request is sent.

The device certificate is self-signed and never chained to a CA; what authenticates the
device is its SHA-256, taken at pairing (from the TXT record or typed from the TUI).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from image.lan.errors import DeviceRefused, DeviceUnreachable, PinMismatch

TIMEOUT_S = 30.0
CHUNK = 1024 * 1024
SEND_PIECE = 8 * CHUNK  # per sendfile call: the progress bar moves every 8 MiB


def fingerprint_of_der(der: bytes) -> str:
    """``sha256:`` + hex of a DER certificate (as the device computes it)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


class PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection that refuses any certificate but the pinned one."""

    def __init__(self, host: str, port: int, fingerprint: str, timeout: float) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the pin below is the check, not a CA chain
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        super().__init__(host, port, timeout=timeout, context=context)
        self.fingerprint = fingerprint.lower()

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        got = fingerprint_of_der(der)
        if got != self.fingerprint:
            self.sock.close()
            self.sock = None
            raise PinMismatch(
                f"{self.host}:{self.port} presented certificate {got}, pinned {self.fingerprint}"
                ": not the paired device (or it was re-imaged); nothing was sent. Compare with "
                "the device's Pair screen and pair again only if it matches"
            )


def _reply(status: int, body: bytes, where: str) -> Any:
    try:
        value = json.loads(body) if body else {}
    except ValueError:
        value = {"error": body[:200].decode("utf-8", "replace")}
    if status >= 400:
        message = value.get("error", "") if isinstance(value, dict) else str(value)
        raise DeviceRefused(f"{where}: HTTP {status}: {message}", status)
    return value


class DeviceClient:
    """Requests to one device (``token`` may be None only for pairing)."""

    def __init__(
        self,
        host: str,
        port: int,
        fingerprint: str,
        token: str | None = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.host, self.port, self.fingerprint = host, port, fingerprint
        self.token, self.timeout = token, timeout

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _connect(self) -> PinnedConnection:
        conn = PinnedConnection(self.host, self.port, self.fingerprint, self.timeout)
        try:
            conn.connect()
        except (OSError, ssl.SSLError) as exc:
            raise DeviceUnreachable(f"{self.where}: cannot connect: {exc}") from None
        return conn

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes, str]:
        """(status, body, content type) of one request."""
        conn = self._connect()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = self._headers()
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Content-Type", "")
        except (OSError, http.client.HTTPException) as exc:
            raise DeviceUnreachable(f"{self.where}: {method} {path} failed: {exc}") from None
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, data, _ = self.request(method, path, body)
        return _reply(status, data, f"{self.where} {path}")

    def download(self, path: str, out: BinaryIO) -> int:
        status, data, _ = self.request("GET", path)
        if status != 200:
            _reply(status, data, f"{self.where} {path}")
        out.write(data)
        return len(data)

    def upload(
        self, bundle: Path, progress: Callable[[int], None] | None = None, *, clear: bool = True
    ) -> Any:
        """PUT the bundle with ``Expect: 100-continue``; the body only once the device accepts.

        ``clear`` (the default): ask over the pinned TLS connection for a one-time ticket bound
        to the bundle's signed head, then stream the body without TLS on the same port (the
        bundle's signature and chunk digests guard it; docs/decisions.md §33). A device that
        does not know tickets (404) gets the body over TLS, as with ``clear=False``.
        """
        size = bundle.stat().st_size
        ticket = self._ticket(bundle, size) if clear else None
        conn: http.client.HTTPConnection
        if ticket is None:
            conn, auth = self._connect(), self._headers()
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            auth = {"Authorization": f"Ticket {ticket}"}
            try:
                conn.connect()
            except OSError as exc:
                raise DeviceUnreachable(f"{self.where}: cannot connect: {exc}") from None
        sent = 0
        try:
            conn.putrequest("PUT", "/v1/bundle", skip_accept_encoding=True)
            for name, value in {
                **auth,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
                "Expect": "100-continue",
            }.items():
                conn.putheader(name, value)
            conn.endheaders()
            status, head = _read_head(conn.sock)
            if status != 100:
                return _reply(status, _read_body(conn.sock, head), f"{self.where} upload")
            with bundle.open("rb") as handle:
                while sent < size:
                    try:
                        done = _send_piece(conn.sock, handle, sent, size - sent)
                    except OSError as exc:
                        return self._after_broken_send(conn, exc, sent, size)
                    if not done:
                        break  # the file shrank under us: the device reports the short body
                    sent += done
                    if progress is not None:
                        progress(sent)
            resp = conn.getresponse()
            return _reply(resp.status, resp.read(), f"{self.where} upload")
        except (OSError, http.client.HTTPException) as exc:
            raise DeviceUnreachable(
                f"{self.where}: connection lost after {sent} of {size} bytes: {exc}"
            ) from None
        finally:
            conn.close()

    def _ticket(self, bundle: Path, size: int) -> str | None:
        """A ticket for one clear upload of ``bundle``; None where the device has none to give."""
        try:
            head_len, head_sha256 = bundle_head(bundle)
        except (OSError, ValueError):
            return None  # not a bundle we can read: let the device refuse it over TLS
        body = {"size": size, "head_len": head_len, "head_sha256": head_sha256}
        try:
            return str(self.json("POST", "/v1/upload-ticket", body)["ticket"])
        except DeviceRefused as exc:
            if exc.status == 404:  # a device from before tickets
                return None
            raise

    def _after_broken_send(
        self, conn: http.client.HTTPConnection, exc: OSError, sent: int, size: int
    ) -> Any:
        """The device stopped reading: report its answer if it sent one, else the break."""
        try:
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            raise DeviceUnreachable(
                f"{self.where}: connection lost after {sent} of {size} bytes: {exc}"
            ) from None
        return _reply(resp.status, body, f"{self.where} upload")


def _send_piece(sock: socket.socket, handle: BinaryIO, offset: int, left: int) -> int:
    """Send up to :data:`SEND_PIECE` bytes of ``handle`` from ``offset``; bytes sent.

    A plain socket gets them by ``sendfile``: from the page cache into the socket, no copy
    through this process (the clear upload; under CPU contention the client's copies cost the
    push as much as the device's). Under TLS the bytes must pass through ``ssl``: 1 MiB writes.
    """
    if isinstance(sock, ssl.SSLSocket):
        handle.seek(offset)
        chunk = handle.read(min(left, CHUNK))
        sock.sendall(chunk)
        return len(chunk)
    return sock.sendfile(handle, offset, min(left, SEND_PIECE))


def bundle_head(bundle: Path) -> tuple[int, str]:
    """Length and SHA-256 of the bundle's signed head (manifest.json and manifest.sig members).

    What an upload ticket names; ValueError if the file does not start like a bundle.
    """
    from appliance.bundle import peek_manifest
    from appliance.errors import ApplianceError

    with bundle.open("rb") as handle:
        try:
            peek_manifest(handle, source=str(bundle))
        except ApplianceError as exc:
            raise ValueError(str(exc)) from None
        length = handle.tell()
        handle.seek(0)
        return length, hashlib.sha256(handle.read(length)).hexdigest()


def _read_head(sock: socket.socket) -> tuple[int, bytes]:
    """Status and header bytes of the next response (read byte by byte: it is tiny)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise http.client.RemoteDisconnected("the device closed the connection")
        head += byte
        if len(head) > 16384:
            raise http.client.HTTPException("response head over 16 KiB")
    parts = head.split(b" ", 2)
    try:
        return int(parts[1]), head
    except (IndexError, ValueError):
        raise http.client.BadStatusLine(head[:80].decode("latin-1")) from None


def _read_body(sock: socket.socket, head: bytes) -> bytes:
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip() or 0)
    body = b""
    while len(body) < length:
        part = sock.recv(length - len(body))
        if not part:
            break
        body += part
    return body
