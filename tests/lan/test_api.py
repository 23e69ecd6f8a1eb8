"""The device API across the veth: pairing, 401/429, pinning, uploads (refused, 413, 409,
stalled), diagnostics, slot actions. Each test runs its own device process."""

from __future__ import annotations

import itertools
import json
import os
import socket
import ssl
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.slots.filestore import file_loader
from appliance.slots.state import BootState
from image.cli import cli as kiln
from image.lan.client import DeviceClient
from image.lan.errors import DeviceRefused, PinMismatch
from image.lan.store import PairedStore
from tools.lan_rig import LanDevice, Release, Veth, image, wait_for

_ports = itertools.count(18443 + os.getpid() % 1000 * 20)


@pytest.fixture
def device(tmp_path: Path, veth: Veth, release: Release) -> Iterator[LanDevice]:
    dev = LanDevice(tmp_path / "device", 1, release)
    dev.port = next(_ports)
    yield dev
    dev.stop()


def start(dev: LanDevice, veth: Veth, *extra: str) -> None:
    dev.start(veth, dev.port, *extra)


def paired_client(dev: LanDevice, veth: Veth) -> DeviceClient:
    client = DeviceClient(veth.dev_addr, dev.port, dev.fingerprint())
    reply = client.json("POST", "/v1/pair", {"code": dev.pair_code(), "name": "test"})
    client.token = reply["token"]
    return client


def test_pair_with_kiln_then_status_and_diag(
    device: LanDevice, veth: Veth, xdg: Path, tmp_path: Path
) -> None:
    start(device, veth)
    (device.data / "edgekiln" / "pipeline.json").write_text(
        json.dumps({"mqtt": {"host": "broker", "password": "hunter2"}, "fps": 5})
    )
    where = f"{veth.dev_addr}:{device.port}"
    result = CliRunner().invoke(
        kiln,
        ["pair", where, "--code", device.pair_code(), "--fingerprint", device.fingerprint()],
    )
    assert result.exit_code == 0, result.output
    stored = PairedStore().find("dev01")
    assert stored.fingerprint == device.fingerprint() and stored.site == "plant-1"
    assert (xdg / "edgekiln" / "lan-devices.json").stat().st_mode & 0o077 == 0
    tokens = json.loads((device.data / "edgekiln" / "api" / "tokens-v1.json").read_text())
    assert stored.token not in json.dumps(tokens)  # only the hash is kept on the device

    result = CliRunner().invoke(kiln, ["status", "dev01", "--json"])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output)
    assert reply["id"] == "dev01" and reply["status"]["booted"] == "A"

    out = tmp_path / "diag.tar"
    result = CliRunner().invoke(kiln, ["diag", "dev01", "-o", str(out)])
    assert result.exit_code == 0, result.output
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert {"diag/versions.json", "diag/slots.json", "diag/env.json"} <= names
        assert "diag/events.jsonl" in names and "diag/journal.txt" in names
        config = tar.extractfile("diag/config/edgekiln/pipeline.json")
        assert config is not None
        text = config.read().decode()
    assert "hunter2" not in text and "<redacted>" in text and '"fps": 5' in text
    assert not any("api" in n.split("/") for n in names)  # no key, no token hashes


def test_no_token_401_and_wrong_token_429_with_event(device: LanDevice, veth: Veth) -> None:
    start(device, veth)
    client = DeviceClient(veth.dev_addr, device.port, device.fingerprint())
    with pytest.raises(DeviceRefused) as info:
        client.json("GET", "/v1/status")
    assert info.value.status == 401
    client.token = "not-a-token"
    statuses = []
    for _ in range(6):
        with pytest.raises(DeviceRefused) as info:
            client.json("GET", "/v1/status")
        statuses.append(info.value.status)
    assert statuses[:4] == [401] * 4 and statuses[4:] == [429, 429]
    failed = [e for e in device.events if e["kind"] == "api-auth-failed"]
    assert len(failed) == 5 and failed[-1]["locked_out"] is True
    assert failed[-1]["client"] == veth.host_addr
    # a locked-out client cannot pair either, even with the right code
    with pytest.raises(DeviceRefused) as info:
        client.json("POST", "/v1/pair", {"code": device.pair_code()})
    assert info.value.status == 429


def test_wrong_pairing_code_is_refused_and_the_code_is_one_time(
    device: LanDevice, veth: Veth
) -> None:
    start(device, veth)
    client = DeviceClient(veth.dev_addr, device.port, device.fingerprint())
    code = device.pair_code()
    with pytest.raises(DeviceRefused) as info:
        client.json("POST", "/v1/pair", {"code": "00000000" if code != "00000000" else "1"})
    assert info.value.status == 403
    assert "token" in client.json("POST", "/v1/pair", {"code": code})
    with pytest.raises(DeviceRefused):
        client.json("POST", "/v1/pair", {"code": code})  # used up


def test_pin_mismatch_refused_before_anything_is_sent(device: LanDevice, veth: Veth) -> None:
    start(device, veth)
    code = device.pair_code()
    wrong = "sha256:" + "0" * 64
    client = DeviceClient(veth.dev_addr, device.port, wrong)
    with pytest.raises(PinMismatch, match="nothing was sent"):
        client.json("POST", "/v1/pair", {"code": code})
    # the code was not spent: the request never reached the device
    assert (device.data / "edgekiln" / "api" / "pair-code.json").exists()
    result = CliRunner().invoke(
        kiln,
        ["pair", f"{veth.dev_addr}:{device.port}", "--code", code, "--fingerprint", wrong],
    )
    assert result.exit_code != 0 and "nothing was sent" in str(result.exception)
    assert (device.data / "edgekiln" / "api" / "pair-code.json").exists()


def test_unknown_key_bundle_refused_nothing_written(
    device: LanDevice, veth: Veth, tmp_path: Path
) -> None:
    start(device, veth)
    client = paired_client(device, veth)
    stranger = Release(tmp_path / "stranger").bundle("v2.ekb", image(2, device.image_size))
    before = device.slots["B"].read_bytes()
    with pytest.raises(DeviceRefused) as info:
        client.upload(stranger)
    assert info.value.status == 422
    assert device.slots["B"].read_bytes() == before
    assert file_loader(device.loader_file).read() == BootState()
    assert [e for e in device.events if e["kind"] == "api-upload-refused"]


def test_upload_installs_then_mark_good_and_rollback(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    start(device, veth)
    client = paired_client(device, veth)
    v2 = image(2, device.image_size)
    reply = client.upload(release.bundle("v2.ekb", v2))
    assert reply["installed"] == "2.0.0" and reply["slot"] == "B"
    assert device.slots["B"].read_bytes() == v2
    assert file_loader(device.loader_file).read() == BootState("A", "B", 1)
    assert client.json("POST", "/v1/mark-good") == {"committed": "A"}
    assert client.json("POST", "/v1/rollback")["next_boot"] in ("A", "B")
    assert client.json("POST", "/v1/reboot")["reboot"]
    page = client.json("GET", "/v1/events?offset=0&limit=2")
    assert len(page["items"]) == 2 and page["next"] == 2 and page["total"] >= 4


def test_oversized_upload_413(device: LanDevice, veth: Veth, release: Release) -> None:
    start(device, veth, "--max-upload", "100000")
    client = paired_client(device, veth)
    before = device.slots["B"].read_bytes()
    with pytest.raises(DeviceRefused) as info:
        client.upload(release.bundle("v2.ekb", image(2, device.image_size)))
    assert info.value.status == 413
    assert device.slots["B"].read_bytes() == before
    assert file_loader(device.loader_file).read() == BootState()


def _stalled_upload(dev: LanDevice, veth: Veth, token: str, bundle: bytes) -> ssl.SSLSocket:
    """Send the headers and the first 96 KiB of the bundle, then nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock = context.wrap_socket(socket.create_connection((veth.dev_addr, dev.port), 10))
    head = (
        f"PUT /v1/bundle HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(bundle)}\r\nExpect: 100-continue\r\n\r\n"
    )
    sock.sendall(head.encode())
    assert sock.recv(64).startswith(b"HTTP/1.1 100")
    sock.sendall(bundle[: 96 * 1024])
    return sock


def test_second_upload_409_and_stalled_client_abandoned(
    device: LanDevice, veth: Veth, release: Release
) -> None:
    start(device, veth, "--stall-timeout", "6")
    client = paired_client(device, veth)
    assert client.token is not None
    bundle = release.bundle("v2.ekb", image(2, device.image_size))
    sock = _stalled_upload(device, veth, client.token, bundle.read_bytes())
    try:
        # the first upload is verified and writing, then stalls: a second one is refused
        assert wait_for(device.loader_file.exists)
        with pytest.raises(DeviceRefused) as info:
            client.upload(bundle)
        assert info.value.status == 409
        assert wait_for(lambda: any(e["kind"] == "api-upload-abandoned" for e in device.events), 30)
    finally:
        sock.close()
    # the slot is left as for a refused (truncated) bundle: marked bad, A still boots
    assert file_loader(device.loader_file).read() == BootState("A", None, 0, frozenset({"B"}))
    # and the lock is free again (released just after that event is written): the same
    # bundle now installs
    assert wait_for(lambda: _installs(client, bundle), 20, 0.2)


def _installs(client: DeviceClient, bundle: Path) -> bool:
    try:
        return bool(client.upload(bundle)["installed"] == "2.0.0")
    except DeviceRefused as exc:
        if exc.status != 409:
            raise
        return False


def test_unpaired_device_shows_certificate_and_code_on_its_console(
    device: LanDevice, veth: Veth, xdg: Path, release: Release
) -> None:
    """Never paired: at start the server writes its fingerprint and a one-time code to the
    console (here a file given as ``--console``); the laptop pairs with exactly that, pushes
    with ``--reboot``; started again once paired, it opens no pairing by itself."""
    import re

    start(device, veth)
    console = device.console.read_text()
    fp = re.search(r"edgekiln: LAN API certificate (sha256:[0-9a-f]{64})", console)
    code = re.search(r"edgekiln: LAN pairing code: (\d{8}) \(valid 300 s, once\)", console)
    assert fp is not None and code is not None, console
    assert fp.group(1) == device.fingerprint()
    where = f"{veth.dev_addr}:{device.port}"
    paired = CliRunner().invoke(
        kiln, ["pair", where, "--code", code.group(1), "--fingerprint", fp.group(1)]
    )
    assert paired.exit_code == 0, paired.output
    bundle = release.bundle("v2.ekb", image(2, device.image_size))
    pushed = CliRunner().invoke(kiln, ["push", str(bundle), where, "--reboot"])
    assert pushed.exit_code == 0, pushed.output
    assert "installed 2.0.0 into slot B; rebooting" in pushed.output
    assert wait_for(lambda: any(e["kind"] == "api-reboot" for e in device.events), 10)
    device.stop()
    device.console.write_text("")
    start(device, veth)
    assert "pairing code" not in device.console.read_text()
    assert not (device.data / "edgekiln" / "api" / "pair-code.json").exists()


def test_a_pending_code_is_not_replaced_at_start(device: LanDevice, veth: Veth) -> None:
    """A code already shown (the Pair screen makes one before it starts the service, or a
    restarted service's first one) stays valid: the server opens no pairing of its own."""
    from appliance.api.auth import take_pair_code

    code = device.pair_code()
    start(device, veth)
    assert "pairing code" not in device.console.read_text()
    assert take_pair_code(device.data / "edgekiln" / "api", code)
