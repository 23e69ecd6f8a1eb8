"""The installer on image files: file, stdin and HTTP sources; refusals; read-back check."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle import FileSink
from appliance.bundle.errors import BundleError
from appliance.ota.direct import DirectMedium, DirectUnsupported
from appliance.ota.errors import ReadBackError, TargetError
from appliance.ota.installer import InstallResult, install
from appliance.slots.errors import InvalidTransition
from appliance.slots.filestore import file_loader
from appliance.slots.state import BootState, Slot
from appliance.state import load_state
from tools.powercut import IMAGE_SIZE, PRODUCT, TARGET, Device

from .test_direct import FailingMedium


@pytest.fixture
def device(tmp_path: Path) -> Device:
    dev = Device(tmp_path / "device")
    dev.reset()
    return dev


def install_on(
    device: Device, bundle: bytes | None = None, booted: Slot = "A", **options: Any
) -> InstallResult:
    """The real installer on ``device``: ``bundle`` (default: its v2) from memory."""
    return install(
        io.BytesIO(device.bundle_v2 if bundle is None else bundle),
        policy=device.policy(),
        loader=device.loader(),
        booted=booted,
        targets=device.slots,
        **options,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()[:IMAGE_SIZE]).hexdigest()


def test_install_writes_verifies_and_tries_once(device: Device) -> None:
    result = install_on(
        device,
        data_dir=device.root / "data",
    )
    assert result.slot == "B" and result.version == "2.0.0"
    assert device.slots["B"].read_bytes() == device.v2
    assert device.loader().read() == BootState("A", "B", 1)
    installed = load_state(device.root / "data").installed
    assert installed is not None and installed.slot == "B"
    assert load_state(device.root / "data").security_floor == 0  # raised only at commit
    assert device.boot() == ("B", "2.0.0")
    assert device.boot() == ("A", "1.0.0")  # not committed: back to A


def test_hash_readback_digests_the_slot_as_re_read(device: Device) -> None:
    result = install_on(
        device,
        hash_readback=True,
    )
    assert result.image_sha256 == hashlib.sha256(device.v2).hexdigest() == digest(device.slots["B"])
    assert device.loader().read() == BootState("A", "B", 1)


def test_refused_bundle_leaves_slot_and_loader_untouched(device: Device) -> None:
    before = device.slots["B"].read_bytes()
    tampered = bytearray(device.bundle_v2)
    tampered[600] ^= 1  # inside the manifest: the signature no longer matches
    with pytest.raises(BundleError):
        install_on(
            device,
            bytes(tampered),
        )
    assert device.slots["B"].read_bytes() == before
    assert device.loader().read() == BootState()


class Download:
    """A stream that can only be read (an HTTP body, a pipe): its length is not known."""

    def __init__(self, data: bytes) -> None:
        self._buffer = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buffer.read(n)


def test_truncated_download_leaves_the_slot_marked_bad(device: Device) -> None:
    cut = device.bundle_v2[: len(device.bundle_v2) // 2]
    with pytest.raises(BundleError):
        install(
            Download(cut),  # type: ignore[arg-type]
            policy=device.policy(),
            loader=device.loader(),
            booted="A",
            targets=device.slots,
        )
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))
    assert device.boot() == ("A", "1.0.0")


def test_refuses_while_the_running_slot_is_on_trial(device: Device) -> None:
    device.loader().write(BootState("A", "B", 0))
    with pytest.raises(InvalidTransition, match="not committed yet"):
        install_on(
            device,
            booted="B",
        )


class FlakyMedium(FileSink):
    """A medium that silently corrupts one byte it is given (a failing eMMC)."""

    def write(self, offset: int, data: bytes) -> None:
        if offset == 0:
            data = b"\xff" + data[1:]
        super().write(offset, data)


def test_read_back_mismatch_keeps_the_slot_bad(device: Device) -> None:
    with pytest.raises(ReadBackError, match="reads back"):
        install_on(
            device,
            sink_factory=FlakyMedium,
        )
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))


def test_read_back_mismatch_on_the_o_direct_path_keeps_the_slot_bad(device: Device) -> None:
    with pytest.raises(ReadBackError, match="other bytes than were written at byte 70000 "):
        install_on(
            device,
            medium_factory=lambda path: FailingMedium(path, 70_000),
            region=32 * 1024,
        )
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))


def no_o_direct(path: Path) -> DirectMedium:
    """The probe of a file system that refuses O_DIRECT (none here: tmpfs takes it since 6.6)."""
    raise DirectUnsupported(f"{path}: O_DIRECT refused (Invalid argument)")


def test_slot_without_o_direct_is_written_through_the_page_cache(device: Device) -> None:
    result = install_on(
        device,
        medium_factory=no_o_direct,
        hash_readback=True,
    )
    assert result.image_sha256 == hashlib.sha256(device.v2).hexdigest() == digest(device.slots["B"])
    assert device.boot() == ("B", "2.0.0")


@pytest.fixture
def http_url(device: Device, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "v2.bundle").write_bytes(device.bundle_v2)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path / "www"), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v2.bundle"
    server.shutdown()
    server.server_close()


@pytest.mark.integration
@pytest.mark.parametrize("how", ["file", "stdin", "http"])
def test_appliance_install_command(device: Device, tmp_path: Path, how: str, http_url: str) -> None:
    keyring = tmp_path / "keyring.json"
    keyring.write_bytes(device.keyring.to_bytes())
    (tmp_path / "v2.bundle").write_bytes(device.bundle_v2)
    state = tmp_path / "slots.env"
    src = {"file": str(tmp_path / "v2.bundle"), "stdin": "-", "http": http_url}[how]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "appliance"),
            "install",
            src,
            f"--loader=file:{state}",
            "--booted=A",
            f"--keyring={keyring}",
            f"--product={PRODUCT}",
            f"--target={TARGET}",
            f"--slot=A={device.slots['A']}",
            f"--slot=B={device.slots['B']}",
            f"--data-dir={device.root / 'data'}",
            *(["--hash-readback"] if how == "http" else []),
        ],
        input=device.bundle_v2 if how == "stdin" else None,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"installed 2.0.0 into slot B" in proc.stdout
    assert digest(device.slots["B"]) in device.signed
    assert file_loader(state).read() == BootState("A", "B", 1)


def test_appliance_install_wrong_product_is_refused(device: Device, tmp_path: Path) -> None:
    keyring = tmp_path / "keyring.json"
    keyring.write_bytes(device.keyring.to_bytes())
    (tmp_path / "v2.bundle").write_bytes(device.bundle_v2)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "appliance"),
            "install",
            str(tmp_path / "v2.bundle"),
            f"--loader=file:{tmp_path / 's.env'}",
            "--booted=A",
            f"--keyring={keyring}",
            "--product=other-product",
            f"--target={TARGET}",
            f"--slot=A={device.slots['A']}",
            f"--slot=B={device.slots['B']}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "product" in proc.stderr


def _delta_bundle(device: Device, tmp_path: Path) -> tuple[bytes, bytes]:
    """(bundle, new image): v1 with a few changed bytes, as a delta against v1."""
    from appliance.bundle import write_bundle
    from appliance.bundle.writer import PayloadSource
    from tools.powercut import CHUNK

    (tmp_path / "v1.img").write_bytes(device.v1)
    new = bytearray(device.v1)
    new[1000:1100] = bytes(100)
    new[200_000:200_010] = b"0123456789"
    (tmp_path / "v2.img").write_bytes(new)
    out = io.BytesIO()
    write_bundle(
        out,
        key=device.key,
        product=PRODUCT,
        targets=[TARGET],
        version="2.0.0",
        security_version=1,
        created=1_750_000_000,
        chunk_size=CHUNK,
        payloads=[PayloadSource.delta(tmp_path / "v2.img", tmp_path / "v1.img")],
    )
    return out.getvalue(), bytes(new)


def test_delta_bundle_is_rebuilt_from_the_running_slot(device: Device, tmp_path: Path) -> None:
    bundle, new = _delta_bundle(device, tmp_path)
    assert len(bundle) < len(device.bundle_v2) // 10
    install_on(
        device,
        bundle,
    )
    assert device.slots["B"].read_bytes() == new
    assert device.loader().read() == BootState("A", "B", 1)


@contextlib.contextmanager
def cpus(count: int) -> Iterator[None]:
    """Run the calling thread (and the threads it starts) on ``count`` of its CPUs."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < count:
        pytest.skip(f"needs {count} CPUs, this test may use {len(allowed)}")
    os.sched_setaffinity(0, sorted(allowed)[:count])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def test_delta_for_another_base_changes_nothing_on_one_core(device: Device, tmp_path: Path) -> None:
    from appliance.bundle.delta import DeltaBaseError

    bundle, _ = _delta_bundle(device, tmp_path)
    device.slots["A"].write_bytes(device.v2)  # the running slot is not the delta's base
    before = device.slots["B"].read_bytes()
    with cpus(1), pytest.raises(DeltaBaseError, match="install the full bundle"):
        install_on(
            device,
            bundle,
        )
    assert device.loader().read() == BootState()
    assert device.slots["B"].read_bytes() == before


def test_delta_for_another_base_is_never_tried_on_more_cores(
    device: Device, tmp_path: Path
) -> None:
    """The base is checked while verified chunks are written (docs/decisions.md §34)."""
    from appliance.bundle.delta import DeltaBaseError
    from tools.powercut import CHUNK

    bundle, new = _delta_bundle(device, tmp_path)
    device.slots["A"].write_bytes(device.v2)  # the running slot is not the delta's base
    before = device.slots["B"].read_bytes()
    with cpus(2), pytest.raises(DeltaBaseError, match="install the full bundle"):
        install_on(
            device,
            bundle,
        )
    # As a refused stream leaves it: marked bad, never tried, a verified prefix at most.
    assert device.loader().read() == BootState(bad=frozenset({"B"}))
    after = device.slots["B"].read_bytes()
    k = 0
    while k < len(new) and after[k : k + CHUNK] == new[k : k + CHUNK]:
        k += CHUNK
    assert after[k:] == before[k:]


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Attach image files as loop block devices (root only); detached afterwards."""
    attached: list[str] = []

    def attach(size: int) -> Path:
        backing = tmp_path / f"loop{len(attached)}.img"
        with backing.open("wb") as f:
            f.truncate(size)
        proc = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"no loop devices here: {proc.stderr.strip()}")
        attached.append(proc.stdout.strip())
        return Path(attached[-1])

    yield attach
    for dev in attached:
        subprocess.run(["losetup", "-d", dev], capture_output=True, check=False)


@pytest.mark.integration
def test_install_into_a_block_device(device: Device, loop_device: Callable[[int], Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    small, big = loop_device(IMAGE_SIZE // 2), loop_device(IMAGE_SIZE * 2)
    with pytest.raises(TargetError, match="holds"):
        install(
            io.BytesIO(device.bundle_v2),
            policy=device.policy(),
            loader=device.loader(),
            booted="A",
            targets={"A": device.slots["A"], "B": small},
        )
    assert device.loader().read() == BootState()  # refused before the slot was marked bad
    result = install(
        io.BytesIO(device.bundle_v2),
        policy=device.policy(),
        loader=device.loader(),
        booted="A",
        targets={"A": device.slots["A"], "B": big},
    )
    assert result.slot == "B"
    with big.open("rb") as f:
        assert f.read(IMAGE_SIZE) == device.v2
    assert device.loader().read() == BootState("A", "B", 1)


@pytest.mark.integration
def test_appliance_install_takes_identity_and_data_from_device_json(
    device: Device, tmp_path: Path
) -> None:
    import json

    keyring = tmp_path / "keyring.json"
    keyring.write_bytes(device.keyring.to_bytes())
    (tmp_path / "v2.bundle").write_bytes(device.bundle_v2)
    data = tmp_path / "data"
    config = tmp_path / "device.json"
    config.write_text(json.dumps({"product": PRODUCT, "target": TARGET, "data_dir": str(data)}))
    env = {**os.environ, "EDGEKILN_DEVICE_CONFIG": str(config)}
    env.pop("EDGEKILN_DATA", None)
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "appliance"),
            "install",
            str(tmp_path / "v2.bundle"),
            f"--loader=file:{tmp_path / 's.env'}",
            "--booted=A",
            f"--keyring={keyring}",
            f"--slot=A={device.slots['A']}",
            f"--slot=B={device.slots['B']}",
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    installed = load_state(data).installed
    assert installed is not None and (installed.slot, installed.version) == ("B", "2.0.0")
