"""The LAN API server: ``ThreadingHTTPServer`` + ``ssl``, one handler, bearer tokens.

Why the standard library: the API has eight endpoints, one of which streams a large body into
the installer; ``http.server`` does that with a blocking file object and adds nothing to the
frozen runtime (an ASGI stack would add an event loop, a server and a framework for no gain
here). TLS is :mod:`ssl` over the device certificate from :mod:`appliance.api.tls`.

Endpoints (all JSON unless said; all but ``/v1/pair`` need ``Authorization: Bearer TOKEN``):

========================  ================================================================
``POST /v1/pair``         ``{"code", "name"}`` → ``{"token", "id", "fingerprint"}``
``GET /v1/status``        identity, slots, version, mode, health (the TUI's Status data)
``GET /v1/events``        ``?offset=N&limit=M`` → one page of ``events.jsonl``
``GET /v1/diag``          diagnostics tar (``application/x-tar``)
``PUT /v1/bundle``        the bundle as the body (``Content-Length`` required, ``Expect:
                          100-continue`` honoured) → install result; 409 busy, 413 too big
``POST /v1/upload-ticket`` ``{"size", "head_len", "head_sha256"}`` → ``{"ticket"}``: one
                          ``PUT /v1/bundle`` in the clear on the same port with
                          ``Authorization: Ticket T`` (:mod:`appliance.api.ticket`)
``POST /v1/reboot``       reboot after the response is sent
``POST /v1/rollback``     :func:`appliance.slots.control.rollback`
``POST /v1/mark-good``    :func:`appliance.slots.control.commit_booted`
``POST /v1/fault/hang-agent`` only on images whose read-only slot enables fault injection
                          (the QEMU test profile, :mod:`appliance.api.faults`): SIGSTOP
                          to the agent, so systemd's watchdog restarts it; 404 elsewhere
========================  ================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from appliance.api import diag, faults
from appliance.api.auth import FailureLimiter, TokenStore, append_event, take_pair_code
from appliance.api.ticket import PinnedHead, Ticket, TicketRefused, TicketStore
from appliance.api.ticket import parse_request as parse_ticket_request
from appliance.api.tls import ensure_certificate
from appliance.api.upload import BodyStream, UploadStalled
from appliance.device import Device
from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8443
MAX_UPLOAD = 4 * 1024**3
STALL_TIMEOUT_S = 30.0
MAX_JSON_BODY = 4096
HANG_AGENT = "/v1/fault/hang-agent"


@dataclasses.dataclass
class ApiConfig:
    """What the server serves and how."""

    device: Device
    bind: str
    port: int = DEFAULT_PORT
    max_upload: int = MAX_UPLOAD
    stall_timeout_s: float = STALL_TIMEOUT_S
    targets: Mapping[str, Path] | None = None  # slot images/devices (default: the device's)
    limiter: FailureLimiter = dataclasses.field(default_factory=FailureLimiter)
    #: ``POST /v1/fault/hang-agent`` exists only when the slot says so (appliance/api/faults.py)
    fault_injection: bool = False
    agent_pid: Callable[[], int] = faults.agent_main_pid

    @property
    def api_dir(self) -> Path:
        return self.device.state_dir / "api"


class ApiServer(ThreadingHTTPServer):
    """One TLS server; requests in daemon threads; one install at a time."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        cert, key, self.fingerprint = ensure_certificate(config.api_dir, config.device.device_id())
        self.tokens = TokenStore(config.api_dir)
        self.install_lock = threading.Lock()
        self.tickets = TicketStore()
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl_context.load_cert_chain(cert, key)
        super().__init__((config.bind, config.port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.info("connection from %s ended with an error", client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    """Routes, authentication, rate limiting, JSON replies."""

    protocol_version = "HTTP/1.1"
    server_version = "edgekiln-api/1"
    server: ApiServer
    # A reply is two writes (head, then body): with Nagle on, the body waited for the client's
    # delayed ACK, 40 ms per request (the ticket round trip of every push).
    disable_nagle_algorithm = True

    # -- plumbing --------------------------------------------------------------------------

    def setup(self) -> None:
        # TLS or a ticketed clear upload on one port, told apart by the first byte (a TLS
        # record starts 0x16, an HTTP request line with a letter); both in this thread, never
        # in the accept loop, so a silent client holds up nobody.
        self.request.settimeout(self.server.config.stall_timeout_s)
        self.clear = self.request.recv(1, socket.MSG_PEEK) != b"\x16"
        if not self.clear:
            self.request = self.server.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if not self.clear:  # the wrapper owns the descriptor: end it as socketserver would
                with contextlib.suppress(OSError):
                    self.request.shutdown(socket.SHUT_WR)
                self.request.close()

    def handle_one_request(self) -> None:
        if self.clear:  # only the ticketed upload is served without TLS
            self.raw_requestline = self.rfile.readline(65537)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            if self.command == "PUT":
                self.do_PUT()
            else:
                self.error(
                    HTTPStatus.BAD_REQUEST, "use HTTPS (only ticketed uploads here)", close=True
                )
            self.wfile.flush()
            self.close_connection = True  # one ticket, one upload, one connection
            return
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.client_address[0], format % args)

    def handle_expect_100(self) -> bool:
        # 100 Continue is sent by do_PUT once the upload is accepted (auth, size, not busy).
        return True

    @property
    def client(self) -> str:
        return str(self.client_address[0])

    @property
    def device(self) -> Device:
        return self.server.config.device

    def reply(self, status: int, body: Any, *, close: bool = False) -> None:
        data = (json.dumps(body, default=str) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: HTTPStatus, message: str, *, close: bool = False) -> None:
        self.reply(status, {"error": message, "status": int(status)}, close=close)

    def event(self, kind: str, **details: Any) -> None:
        append_event(self.device.events_path, kind, client=self.client, **details)

    def content_length(self) -> int | None:
        """The declared body size; None (after a 400/411 reply) unless a non-negative integer."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        if not raw.strip().isdigit():
            self.error(HTTPStatus.BAD_REQUEST, "Content-Length must be a byte count", close=True)
            return None
        return int(raw)

    def read_json(self) -> dict[str, Any] | None:
        length = self.content_length()
        if length is None:
            return None
        if length > MAX_JSON_BODY:
            self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "JSON body over 4 KiB", close=True)
            return None
        try:
            value = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self.error(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return None
        return value

    def failed_attempt(self, what: str) -> None:
        """Count one failed credential; log it; 429 if that locked the client out."""
        locked = self.server.config.limiter.fail(self.client)
        self.event("api-auth-failed", what=what, locked_out=locked)
        log.warning("LAN API: %s from %s%s", what, self.client, " (locked out)" if locked else "")

    def authorized(self) -> bool:
        """Check the bearer token; reply 401/429 and return False when it does not pass."""
        if self.server.config.limiter.locked(self.client):
            self.error(HTTPStatus.TOO_MANY_REQUESTS, "too many failed attempts; wait a minute")
            return False
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            self.error(HTTPStatus.UNAUTHORIZED, "no token: pair this laptop first (kiln pair)")
            return False
        if self.server.tokens.check(token.strip()) is None:
            self.failed_attempt("wrong token")
            locked = self.server.config.limiter.locked(self.client)
            status = HTTPStatus.TOO_MANY_REQUESTS if locked else HTTPStatus.UNAUTHORIZED
            self.error(status, "token not known here (revoked, or paired with another device)")
            return False
        return True

    # -- routes ----------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path not in ("/v1/status", "/v1/events", "/v1/diag"):
            self.error(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path}")
            return
        if not self.authorized():
            return
        if url.path == "/v1/status":
            self.reply(HTTPStatus.OK, diag.status(self.device, self.server.fingerprint))
        elif url.path == "/v1/events":
            query = urllib.parse.parse_qs(url.query)
            try:
                offset = max(0, int(query.get("offset", ["0"])[0]))
                limit = int(query.get("limit", ["100"])[0])
            except ValueError:
                self.error(HTTPStatus.BAD_REQUEST, "offset and limit are integers")
                return
            self.reply(HTTPStatus.OK, diag.events_page(self.device.events_path, offset, limit))
        else:
            data = diag.diagnostics_tar(self.device, self.server.fingerprint)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/v1/pair":
            self.pair()
            return
        actions = {"/v1/reboot": self.reboot, "/v1/rollback": self.rollback}
        actions["/v1/mark-good"] = self.mark_good
        actions["/v1/upload-ticket"] = self.upload_ticket
        if self.server.config.fault_injection:  # test-profile images only: no route otherwise
            actions[HANG_AGENT] = self.hang_agent
        if path not in actions:
            self.error(HTTPStatus.NOT_FOUND, f"no such endpoint {path}")
            return
        if not self.authorized():
            return
        try:
            actions[path]()
        except ApplianceError as exc:
            self.error(HTTPStatus.CONFLICT, str(exc))

    def do_PUT(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path != "/v1/bundle":
            self.error(HTTPStatus.NOT_FOUND, f"no such endpoint {path}", close=True)
            return
        if self.clear:
            ticket = self.ticket()
            if ticket is None:
                self.close_connection = True
                return
            self.upload(ticket.size, ticket.head_len, ticket.head_sha256)
            return
        if not self.authorized():
            self.close_connection = True
            return
        self.upload()

    def ticket(self) -> Ticket | None:
        """The ticket this clear upload presents, taken; None after a 401/429 reply."""
        if self.server.config.limiter.locked(self.client):
            self.error(
                HTTPStatus.TOO_MANY_REQUESTS, "too many failed attempts; wait a minute", close=True
            )
            return None
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        try:
            if scheme.lower() != "ticket" or not value.strip():
                raise TicketRefused("no upload ticket: ask for one over HTTPS (kiln push)")
            return self.server.tickets.take(value.strip(), self.client)
        except TicketRefused as exc:
            self.failed_attempt(str(exc))
            self.error(HTTPStatus.UNAUTHORIZED, str(exc), close=True)
            return None

    def upload_ticket(self) -> None:
        body = self.read_json()
        if body is None:
            return
        try:
            size, head_len, head = parse_ticket_request(body, self.server.config.max_upload)
        except OverflowError as exc:
            self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
            return
        except ValueError as exc:
            self.error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        if self.server.install_lock.locked():
            self.error(HTTPStatus.CONFLICT, "another install is running; retry after it")
            return
        ticket = self.server.tickets.issue(self.client, size, head_len, head)
        ttl = self.server.tickets.ttl_s
        self.reply(HTTPStatus.OK, {"ticket": ticket, "expires_in": ttl, "scheme": "http"})

    # -- handlers --------------------------------------------------------------------------

    def pair(self) -> None:
        limiter = self.server.config.limiter
        if limiter.locked(self.client):
            self.event("api-pair-refused", why="locked out")
            self.error(HTTPStatus.TOO_MANY_REQUESTS, "too many failed attempts; wait a minute")
            return
        body = self.read_json()
        if body is None:
            return
        code = str(body.get("code", ""))
        name = "".join(c for c in str(body.get("name", "laptop")) if c.isprintable())[:64]
        if not take_pair_code(self.server.config.api_dir, code):
            self.failed_attempt("wrong or expired pairing code")
            status = HTTPStatus.TOO_MANY_REQUESTS if limiter.locked(self.client) else 403
            self.error(HTTPStatus(status), "wrong or expired pairing code: read it from the TUI")
            return
        token = self.server.tokens.issue(name)
        self.event("api-paired", name=name)
        log.warning("LAN API: paired %r from %s", name, self.client)
        ident = diag.identity(self.device)
        self.reply(HTTPStatus.OK, {"token": token, **ident, "fingerprint": self.server.fingerprint})

    def upload(self, size: int | None = None, head_len: int = 0, head_sha256: str = "") -> None:
        """The bundle in the body into the installer; a ticketed one of ``size`` bytes only."""
        config = self.server.config
        if self.headers.get("Content-Length") is None:
            self.error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required", close=True)
            return
        length = self.content_length()
        if length is None:
            return
        if size is not None and length != size:
            self.error(
                HTTPStatus.BAD_REQUEST, f"the ticket is for {size} bytes, not {length}", close=True
            )
            return
        if length > config.max_upload:
            self.error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"a bundle may be at most {config.max_upload} bytes here",
                close=True,
            )
            return
        if not self.server.install_lock.acquire(blocking=False):
            self.error(
                HTTPStatus.CONFLICT, "another install is running; retry after it", close=True
            )
            return
        try:
            self.install(length, head_len, head_sha256)
        finally:
            self.server.install_lock.release()

    def install(self, length: int, head_len: int = 0, head_sha256: str = "") -> None:
        from appliance.ota.installer import install

        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        device = self.device
        stream = BodyStream(self.rfile, length)  # type: ignore[arg-type]
        body: Any = stream
        started = time.monotonic()
        self.event("api-upload-started", bytes=length, clear=self.clear)
        try:
            if head_len:
                body = PinnedHead(stream, head_len, head_sha256)  # type: ignore[arg-type]
                body.check()  # before the installer sees a byte
            result = install(
                body,
                policy=device.policy(),
                loader=device.loader(),
                booted=device.booted(),
                source=f"LAN upload from {self.client}",
                targets=self.server.config.targets or device.slot_targets,  # type: ignore[arg-type]
                data_dir=device.data_dir,
            )
        except UploadStalled as exc:
            self.event("api-upload-abandoned", why=str(exc))
            log.warning("LAN API: %s", exc)
            self.close_connection = True
            return
        except ApplianceError as exc:  # the installer's refusals and a foreign head
            self.event("api-upload-refused", why=str(exc))
            log.warning("LAN API: bundle from %s refused: %s", self.client, exc)
            self.error(HTTPStatus.UNPROCESSABLE_ENTITY, str(exc), close=True)
            return
        seconds = time.monotonic() - started
        self.event("api-installed", version=result.version, slot=result.slot, seconds=seconds)
        self.reply(
            HTTPStatus.OK,
            {
                "installed": result.version,
                "slot": result.slot,
                "image_sha256": result.image_sha256,
                "image_size": result.image_size,
                "seconds": round(seconds, 3),
            },
            close=stream.received < length,
        )

    def hang_agent(self) -> None:
        try:
            pid = self.server.config.agent_pid()
            faults.hang_agent(pid)
        except faults.FaultUnavailable as exc:
            self.error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
            return
        self.event("api-fault-injected", fault="hang-agent", pid=pid)
        self.reply(HTTPStatus.ACCEPTED, {"stopped": pid, "fault": "hang-agent"})

    def reboot(self) -> None:
        self.event("api-reboot")
        self.reply(HTTPStatus.ACCEPTED, {"reboot": "in 1 s"})
        timer = threading.Timer(1.0, lambda: log.warning("%s", self.device.reboot()))
        timer.daemon = True
        timer.start()

    def rollback(self) -> None:
        from appliance.slots import control
        from appliance.slots.state import loader_choice

        state = control.rollback(self.device.loader(), self.device.booted(), self.device.data_dir)
        self.event("api-rollback")
        self.reply(HTTPStatus.OK, {"next_boot": loader_choice(state)[0]})

    def mark_good(self) -> None:
        from appliance.slots.control import commit_booted

        booted = self.device.booted()
        commit_booted(self.device.loader(), booted, self.device.data_dir)
        self.event("api-mark-good", slot=booted)
        self.reply(HTTPStatus.OK, {"committed": booted})
