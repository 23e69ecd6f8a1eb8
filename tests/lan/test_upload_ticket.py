"""Clear uploads by ticket (docs/decisions.md §33) across the veth: a ticket is single-use,
bound to the address that asked for it, expiring, only for the bundle whose signed head it
names; a bundle changed on the way is refused (a substituted head before the installer reads a
byte); the clear port serves nothing else. Each test runs its own device process."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.api.ticket import HeadMismatch, PinnedHead, TicketRefused, TicketStore
from appliance.slots.filestore import file_loader
from appliance.slots.state import BootState
from image.lan.client import DeviceClient, bundle_head
from image.lan.errors import DeviceRefused
from tools.lan_rig import LanDevice, Release, Veth, image, wait_for

_ports = itertools.count(19443 + os.getpid() % 1000 * 20)


@pytest.fixture
def device(tmp_path: Path, veth: Veth, release: Release) -> Iterator[LanDevice]:
    dev = LanDevice(tmp_path / "device", 1, release)
    dev.start(veth, next(_ports))
    yield dev
    dev.stop()


def paired(dev: LanDevice, veth: Veth) -> DeviceClient:
    client = DeviceClient(veth.dev_addr, dev.port, dev.fingerprint())
    client.token = client.json("POST", "/v1/pair", {"code": dev.pair_code()})["token"]
    return client


def ticket_for(client: DeviceClient, bundle: Path) -> str:
    head_len, head_sha256 = bundle_head(bundle)
    body = {"size": bundle.stat().st_size, "head_len": head_len, "head_sha256": head_sha256}
    return str(client.json("POST", "/v1/upload-ticket", body)["ticket"])


def clear_put(
    dev: LanDevice,
    veth: Veth,
    body: bytes,
    auth: str,
    source: str | None = None,
    declared: int | None = None,
) -> tuple[int, bytes]:
    """A clear ``PUT /v1/bundle`` (Expect: 100-continue): the final status and reply body.

    Status 0: the device reset the connection (it refused and closed with body bytes unread,
    which may drop its reply on the way)."""
    where = (veth.dev_addr, dev.port)
    sock = socket.create_connection(where, 30, source_address=(source, 0) if source else None)
    length = len(body) if declared is None else declared
    with sock:
        sock.sendall(
            f"PUT /v1/bundle HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        reply = sock.recv(65536)
        try:
            if reply.startswith(b"HTTP/1.1 100"):
                reply = reply.split(b"\r\n\r\n", 1)[1]
                sock.sendall(body)
            while part := sock.recv(65536):  # the clear port closes after its one request
                reply += part
        except (ConnectionResetError, BrokenPipeError):
            if not reply:
                return 0, b""
    return int(reply.split(b" ", 2)[1]), reply


def test_clear_upload_installs_and_its_ticket_cannot_be_replayed(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    client = paired(device, veth)
    v2 = image(2, device.image_size)
    bundle = release.bundle("v2.ekb", v2)
    ticket = ticket_for(client, bundle)
    status, reply = clear_put(device, veth, bundle.read_bytes(), f"Ticket {ticket}")
    assert status == 200, reply
    assert device.slots["B"].read_bytes() == v2
    installed = file_loader(device.loader_file).read()
    assert installed == BootState("A", "B", 1)
    # the same ticket again (a replay by anyone who saw it on the wire): refused, nothing done
    status, reply = clear_put(device, veth, bundle.read_bytes(), f"Ticket {ticket}")
    assert status == 401 and b"already used" in reply, reply
    assert file_loader(device.loader_file).read() == installed
    assert [e for e in device.events if e["kind"] == "api-auth-failed"]
    started = [e for e in device.events if e["kind"] == "api-upload-started"]
    assert len(started) == 1 and started[0]["clear"] is True


def test_ticket_from_another_address_refused_and_spent(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    client = paired(device, veth)
    bundle = release.bundle("v2.ekb", image(2, device.image_size))
    ticket = ticket_for(client, bundle)
    other = veth.host_addr.rsplit(".", 1)[0] + ".3"
    subprocess.run(["ip", "addr", "add", f"{other}/24", "dev", veth.host_if], check=True)
    try:
        status, reply = clear_put(device, veth, bundle.read_bytes(), f"Ticket {ticket}", other)
    finally:
        subprocess.run(["ip", "addr", "del", f"{other}/24", "dev", veth.host_if], check=False)
    assert status == 401 and b"presented from" in reply, reply
    # taken at its first presentation: the laptop it was issued to cannot use it either
    status, _ = clear_put(device, veth, bundle.read_bytes(), f"Ticket {ticket}")
    assert status == 401
    assert file_loader(device.loader_file).read() == BootState()


def test_substituted_bundle_refused_before_the_installer_reads_it(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    """A validly signed bundle, but not the one the ticket names (e.g. an older release
    swapped in on the wire): refused with nothing written and no loader state touched."""
    client = paired(device, veth)
    wanted = release.bundle("v2.ekb", image(2, device.image_size))
    other = release.bundle("v3.ekb", image(3, device.image_size), version="3.0.0")
    assert other.stat().st_size == wanted.stat().st_size
    ticket = ticket_for(client, wanted)
    before = device.slots["B"].read_bytes()
    # only the swapped head goes out (the device reads no further before refusing, so no unread
    # bytes make it reset the connection and drop its answer)
    head_len, _ = bundle_head(wanted)
    status, reply = clear_put(
        device, veth, other.read_bytes()[:head_len], f"Ticket {ticket}",
        declared=other.stat().st_size,
    )  # fmt: skip
    assert status == 422 and b"upload ticket names" in reply, reply
    assert device.slots["B"].read_bytes() == before
    assert file_loader(device.loader_file).read() == BootState()
    assert [e for e in device.events if e["kind"] == "api-upload-refused"]


def test_payload_changed_on_the_way_refused_and_not_tried(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    client = paired(device, veth)
    bundle = release.bundle("v2.ekb", image(2, device.image_size))
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the payload, after the pinned head
    ticket = ticket_for(client, bundle)
    status, reply = clear_put(device, veth, bytes(data), f"Ticket {ticket}")
    assert status in (0, 422), reply  # 0: refused mid-body, the reset dropped the answer
    assert wait_for(lambda: any(e["kind"] == "api-upload-refused" for e in device.events))
    state = file_loader(device.loader_file).read()
    assert state.trying is None and state.committed == "A", state  # B is never booted


def test_clear_port_serves_only_ticketed_uploads(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    client = paired(device, veth)
    bundle = release.bundle("v2.ekb", image(2, device.image_size))
    # a bearer token is not a ticket: without TLS nothing but a ticket is accepted
    status, reply = clear_put(device, veth, bundle.read_bytes(), f"Bearer {client.token}")
    assert status == 401 and b"no upload ticket" in reply, reply
    with socket.create_connection((veth.dev_addr, device.port), 10) as sock:
        sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 400")
    # a ticket needs a token, and is refused for a bundle over the size limit or a bad head
    head_len, head = bundle_head(bundle)
    stranger = DeviceClient(veth.dev_addr, device.port, device.fingerprint(), token="x" * 43)
    body = {"size": bundle.stat().st_size, "head_len": head_len, "head_sha256": head}
    with pytest.raises(DeviceRefused) as info:
        stranger.json("POST", "/v1/upload-ticket", body)
    assert info.value.status == 401
    with pytest.raises(DeviceRefused) as info:
        client.json("POST", "/v1/upload-ticket", {**body, "size": 5 * 1024**3})
    assert info.value.status == 413
    with pytest.raises(DeviceRefused) as info:
        client.json("POST", "/v1/upload-ticket", {**body, "head_sha256": "00"})
    assert info.value.status == 400
    # guessing tickets is rate-limited like guessing tokens
    codes = [clear_put(device, veth, b"x", f"Ticket guess{i}")[0] for i in range(6)]
    assert codes[-1] == 429, codes
    assert file_loader(device.loader_file).read() == BootState()


def test_stalled_clear_upload_abandoned_and_409_meanwhile(
    tmp_path: Path, veth: Veth, release: Release
) -> None:
    dev = LanDevice(tmp_path / "stall", 2, release)
    dev.start(veth, next(_ports), "--stall-timeout", "6")
    try:
        client = paired(dev, veth)
        bundle = release.bundle("v2.ekb", image(2, dev.image_size))
        ticket = ticket_for(client, bundle)
        with socket.create_connection((veth.dev_addr, dev.port), 10) as sock:
            sock.sendall(
                f"PUT /v1/bundle HTTP/1.1\r\nHost: x\r\nAuthorization: Ticket {ticket}\r\n"
                f"Content-Length: {bundle.stat().st_size}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            assert sock.recv(64).startswith(b"HTTP/1.1 100")
            sock.sendall(bundle.read_bytes()[: 96 * 1024])  # then nothing
            assert wait_for(dev.loader_file.exists)  # verified and writing
            with pytest.raises(DeviceRefused) as info:
                ticket_for(client, bundle)  # one install at a time: no ticket meanwhile
            assert info.value.status == 409
            abandoned = lambda: any(e["kind"] == "api-upload-abandoned" for e in dev.events)  # noqa: E731
            assert wait_for(abandoned, 30)
        assert file_loader(dev.loader_file).read() == BootState("A", None, 0, frozenset({"B"}))
    finally:
        dev.stop()


def test_tls_upload_still_installs(device: LanDevice, veth: Veth, release: Release) -> None:
    client = paired(device, veth)
    v2 = image(2, device.image_size)
    assert client.upload(release.bundle("v2.ekb", v2), clear=False)["installed"] == "2.0.0"
    assert device.slots["B"].read_bytes() == v2
    started = [e for e in device.events if e["kind"] == "api-upload-started"]
    assert started[-1]["clear"] is False


def test_ticket_store_expiry_single_use_and_peer() -> None:
    now = [100.0]
    store = TicketStore(ttl_s=30.0, clock=lambda: now[0])
    head = hashlib.sha256(b"h").hexdigest()
    first = store.issue("10.0.0.2", 10, 2048, head)
    assert store.take(first, "10.0.0.2").size == 10
    with pytest.raises(TicketRefused, match="already used"):
        store.take(first, "10.0.0.2")
    late = store.issue("10.0.0.2", 10, 2048, head)
    now[0] += 30.5
    with pytest.raises(TicketRefused, match="expired"):
        store.take(late, "10.0.0.2")
    moved = store.issue("10.0.0.2", 10, 2048, head)
    with pytest.raises(TicketRefused, match=r"presented from 10\.0\.0\.9"):
        store.take(moved, "10.0.0.9")
    with pytest.raises(TicketRefused):
        store.take(moved, "10.0.0.2")


class _Chunks:
    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.reads = data, step, 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        part, self.data = self.data[: min(n, self.step)], self.data[min(n, self.step) :]
        return part


def test_pinned_head_checks_before_handing_anything_on() -> None:
    body = bytes(range(256)) * 40
    good = PinnedHead(_Chunks(body, 700), 2048, hashlib.sha256(body[:2048]).hexdigest())  # type: ignore[arg-type]
    out = b""
    while part := good.read(1000):
        out += part
    assert out == body
    source = _Chunks(body, 700)
    bad = PinnedHead(source, 2048, hashlib.sha256(b"other").hexdigest())  # type: ignore[arg-type]
    with pytest.raises(HeadMismatch):
        bad.read(10)
    assert source.reads >= 3  # it read the whole head before answering the first read
