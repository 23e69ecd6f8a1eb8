"""The anti-rollback floor and the slot actions around it, on a file-backed device, through the
real ``appliance`` command (docs/decisions.md §19; issue #17 vulnerabilities 1, 3 and 6 and its
hardening items; issue #18 item 7).

The device: two slot image files, a GRUB environment (both copies) on a fake ESP, a data
directory, and the running slot's device.json. Every refusal is checked for its exit code and
message, and for leaving the slots, both grubenv copies and the files on data byte-identical.
Module-level imports are only names that c1892db has, so that each test runs against that
commit and fails by its assertions (helpers added since are imported where they are used).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.bundle import Keyring, PayloadSource, TrustedKey, write_bundle
from appliance.device import DeviceConfig
from appliance.slots import control
from appliance.slots.state import BootState
from appliance.state import SlotRecord, UpdateState, load_state, save_state, state_path
from tools.powercut import CHUNK, PRODUCT, TARGET, Device

APPLIANCE = str(Path(sys.executable).parent / "appliance")
CREATED = 1_750_000_000


@pytest.fixture
def device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Device:
    dev = Device(tmp_path / "device")
    dev.reset()
    (dev.root / "keyring.json").write_bytes(dev.keyring.to_bytes())
    # The running slot's device.json, for the commands and for the agent's calls alike.
    monkeypatch.setenv("EDGEKILN_DEVICE_CONFIG", str(dev.root / "device.json"))
    return dev


def data(device: Device) -> Path:
    return device.root / "data"


def config(device: Device, version: str, security_version: int) -> DeviceConfig:
    """The running slot's device.json (written where the command reads it) and its struct."""
    doc = {
        "product": PRODUCT,
        "target": TARGET,
        "version": version,
        "security_version": security_version,
        "data_dir": str(data(device)),
    }
    (device.root / "device.json").write_text(json.dumps(doc))
    return DeviceConfig(**doc)  # type: ignore[arg-type]


def bundle(
    device: Device,
    version: str,
    security_version: int,
    *,
    image: bytes | None = None,
    keyring: Keyring | None = None,
    **fields: object,
) -> Path:
    """A bundle signed by the device's release key, as a file (a USB stick's, say)."""
    payloads = [PayloadSource("rootfs.img", "full", image or device.v2, "none")]
    if keyring is not None:
        payloads.append(PayloadSource.keyring(keyring.to_bytes()))
    out = io.BytesIO()
    write_bundle(
        out,
        key=device.key,
        product=PRODUCT,
        targets=[TARGET],
        version=version,
        security_version=security_version,
        created=CREATED,
        payloads=payloads,
        chunk_size=CHUNK,
        **fields,  # type: ignore[arg-type]
    )
    path = device.root / f"{version}-{security_version}-{len(os.listdir(device.root))}.bundle"
    path.write_bytes(out.getvalue())
    return path


def run(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEKILN_DEVICE_CONFIG": str(device.root / "device.json")}
    for name in ("EDGEKILN_DATA", "EDGEKILN_SLOTS", "EDGEKILN_BOOTED_SLOT"):
        env.pop(name, None)
    return subprocess.run(
        [APPLIANCE, *args], capture_output=True, text=True, check=False, env=env, timeout=120
    )


def install(
    device: Device, path: Path, booted: str = "A", *extra: str
) -> subprocess.CompletedProcess[str]:
    return run(
        device,
        "install",
        str(path),
        f"--loader=grub:{device.root / 'esp'}",
        f"--booted={booted}",
        f"--keyring={device.root / 'keyring.json'}",
        f"--slot=A={device.slots['A']}",
        f"--slot=B={device.slots['B']}",
        f"--data-dir={data(device)}",
        *extra,
    )


def slots(device: Device, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        device, "slots", *args, f"--loader=grub:{device.root / 'esp'}", f"--data-dir={data(device)}"
    )


def snapshot(device: Device) -> dict[str, bytes | None]:
    """Everything a refusal must leave alone: slots, loader env (both copies), data."""
    grub = device.root / "esp" / "grub"
    files = {
        "slot A": device.slots["A"],
        "slot B": device.slots["B"],
        "grubenv": grub / "grubenv",
        "grubenv.bak": grub / "grubenv.bak",
    }
    for path in sorted(data(device).rglob("*")):
        if path.is_file():
            files[str(path.relative_to(data(device)))] = path
    out: dict[str, bytes | None] = {name: path.read_bytes() for name, path in files.items()}
    out["state file present"] = b"yes" if state_path(data(device)).exists() else None
    return out


def refused(
    proc: subprocess.CompletedProcess[str], code: int, message: str
) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error:") and message in proc.stderr, proc.stderr
    return proc


def first_boot(device: Device, booted: str, cfg: DeviceConfig) -> None:
    """What the agent does at every boot before its health gate (the factory commit, too).

    ``cfg`` is the running slot's device.json, already written where the agent reads it.
    """
    assert json.loads((device.root / "device.json").read_text())["version"] == cfg.version
    control.reconcile(device.loader(), booted, data(device))  # type: ignore[arg-type]


# -- #17 vulnerability 1: anti-rollback from the factory ---------------------------------------


def test_factory_fresh_device_refuses_an_older_signed_bundle(device: Device) -> None:
    cfg = config(device, "2.0.0", 2)  # the image the device was flashed with: level 2
    old = bundle(device, "1.0.0", 1)
    assert not state_path(data(device)).exists()  # the builder writes no state file
    before = snapshot(device)
    refused(install(device, old), 4, "bundle security_version 1 is below the committed 2")
    assert snapshot(device) == before

    # First boot: the agent's reconcile records the factory slot as committed, with its floor.
    first_boot(device, "A", cfg)
    state = load_state(data(device))
    assert state.committed == SlotRecord("A", "2.0.0", 2) and state.security_floor == 2
    from appliance.state import slot_records

    assert slot_records(data(device))["A"] == SlotRecord("A", "2.0.0", 2)

    # Deleting the state file later does not re-open the downgrade ...
    state_path(data(device)).unlink()
    before = snapshot(device)
    refused(install(device, old), 4, "bundle security_version 1 is below the committed 2")
    assert snapshot(device) == before
    # ... nor does a state file rewritten to floor 0 (whoever can write data) ...
    save_state(data(device), UpdateState())
    before = snapshot(device)
    refused(install(device, old), 4, "bundle security_version 1 is below the committed 2")
    assert snapshot(device) == before
    # ... nor a damaged one (an error that names the file; never a reset to 0).
    state_path(data(device)).write_bytes(b'{"format":1,"security_floor":')
    before = snapshot(device)
    refused(install(device, old), 1, f"{state_path(data(device))} is damaged")
    assert snapshot(device) == before


def test_factory_fresh_device_takes_a_bundle_at_its_level(device: Device) -> None:
    config(device, "2.0.0", 2)
    proc = install(device, bundle(device, "2.1.0", 2))
    assert proc.returncode == 0, proc.stderr
    assert device.loader().read() == BootState("A", "B", 1)


# -- #17 vulnerability 3: slot rollback ignores the floor --------------------------------------


def updated_to_b(device: Device) -> None:
    """Factory A (1.0.0, level 1); 2.0.0 (level 2) installed into B, booted, committed."""
    first_boot(device, "A", config(device, "1.0.0", 1))
    proc = install(device, bundle(device, "2.0.0", 2))
    assert proc.returncode == 0, proc.stderr
    device.loader().write(BootState("A", "B", 0))  # grub.cfg spent the try: B runs
    config(device, "2.0.0", 2)  # B's own device.json
    proc = slots(device, "mark-good", "--booted=B")  # what the health gate does
    assert proc.returncode == 0, proc.stderr
    assert device.loader().read() == BootState("B")
    state = load_state(data(device))
    assert state.committed == SlotRecord("B", "2.0.0", 2, state.committed.bundle_key_id)  # type: ignore[union-attr]
    assert state.security_floor == 2


def test_rollback_to_a_slot_below_the_floor_is_refused(device: Device) -> None:
    updated_to_b(device)
    before = snapshot(device)
    refused(
        slots(device, "rollback", "--booted=B"),
        1,
        "slot A holds 1.0.0 (security_version 1), below this device's anti-rollback floor 2: "
        "roll back refused",
    )
    assert snapshot(device) == before


def test_a_slot_below_the_floor_is_never_committed(device: Device) -> None:
    """The loader fell back to A (B's kernel did not load): A's health gate must not commit it."""
    updated_to_b(device)
    device.loader().write(BootState("B", "A", 0))  # A booted on trial below the floor
    config(device, "1.0.0", 1)  # A's own device.json
    before = snapshot(device)
    refused(
        slots(device, "mark-good", "--booted=A"),
        1,
        "slot A holds 1.0.0 (security_version 1), below this device's anti-rollback floor 2: "
        "not committed",
    )
    assert snapshot(device) == before


def test_health_gate_of_a_slot_below_the_floor_fails_it(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appliance.supervisor.health import HealthReport, health_gate

    updated_to_b(device)
    device.loader().write(BootState("B", "A", 0))
    config(device, "1.0.0", 1)
    monkeypatch.setenv("EDGEKILN_DEVICE_CONFIG", str(device.root / "device.json"))
    reboots: list[bool] = []
    outcome = health_gate(
        device.loader(),
        "A",
        data(device),
        check=lambda: HealthReport(True, [], {}),
        reboot=lambda: reboots.append(True),
    )
    assert outcome == "failed" and reboots == [True]
    assert device.loader().read() == BootState("B", None, 0, frozenset({"A"}))
    state = load_state(data(device))
    assert state.committed is not None and state.committed.slot == "B"


def test_after_a_rollback_commit_the_state_names_the_slot_the_loader_boots(device: Device) -> None:
    updated_to_b(device)
    import appliance.state

    note_slot = getattr(appliance.state, "note_slot", None)  # (c1892db kept no slot records)
    if note_slot is not None:
        note_slot(data(device), SlotRecord("A", "1.9.0", 2))  # A: an older build, same level
    proc = slots(device, "rollback", "--booted=B")
    assert proc.returncode == 0, proc.stderr
    assert "next boot: slot A (tried once)" in proc.stdout
    assert device.loader().read() == BootState("B", "A", 1)
    device.loader().write(BootState("B", "A", 0))
    config(device, "1.9.0", 2)
    assert slots(device, "mark-good", "--booted=A").returncode == 0
    state = load_state(data(device))
    assert device.loader().read().committed == "A"
    assert state.committed == SlotRecord("A", "1.9.0", 2)
    assert state.security_floor == 2


# -- #18 item 7: roll back = back to the last committed slot; cancel a pending update ---------


def test_install_cancel_pending_then_roll_back(device: Device) -> None:
    first_boot(device, "A", config(device, "1.0.0", 1))
    assert install(device, bundle(device, "1.1.0", 1)).returncode == 0
    assert device.loader().read() == BootState("A", "B", 1)
    proc = slots(device, "cancel", "--booted=A")
    assert proc.returncode == 0, proc.stderr
    assert "pending update in slot B cancelled; slot A stays the next boot" in proc.stdout
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))
    assert load_state(data(device)).installed is None
    before = snapshot(device)
    refused(
        slots(device, "rollback", "--booted=A"),
        1,
        "slot B is marked bad; there is nothing to roll back to",
    )
    refused(slots(device, "cancel", "--booted=A"), 1, "no update is pending")
    assert snapshot(device) == before


def test_roll_back_with_an_update_pending_cancels_it(device: Device) -> None:
    """Was: it tried "the other slot", i.e. the pending one again, and changed nothing."""
    first_boot(device, "A", config(device, "1.0.0", 1))
    assert install(device, bundle(device, "1.1.0", 1)).returncode == 0
    proc = slots(device, "rollback", "--booted=A")
    assert proc.returncode == 0, proc.stderr
    assert "pending update cancelled: slot A stays the next boot" in proc.stdout
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))
    assert load_state(data(device)).installed is None


def test_roll_back_leaves_a_running_trial(device: Device) -> None:
    first_boot(device, "A", config(device, "1.0.0", 1))
    assert install(device, bundle(device, "1.1.0", 1)).returncode == 0
    device.loader().write(BootState("A", "B", 0))
    config(device, "1.1.0", 1)
    refused(slots(device, "cancel", "--booted=B"), 1, "slot B is running on trial")
    proc = slots(device, "rollback", "--booted=B")
    assert proc.returncode == 0, proc.stderr
    assert "slot B marked bad; next boot: slot A" in proc.stdout
    assert device.loader().read() == BootState("A", None, 0, frozenset({"B"}))


# -- #17 vulnerability 6: a keyring rotation is validated before the slot is touched ----------


def test_invalid_keyring_rotation_leaves_slot_env_and_state_untouched(device: Device) -> None:
    first_boot(device, "A", config(device, "1.0.0", 1))
    same_version = Keyring(version=1, keys=device.keyring.keys)  # not newer than the device's
    before = snapshot(device)
    refused(
        install(device, bundle(device, "1.1.0", 1, keyring=same_version)),
        3,
        "keyring update has version 1, not newer than the current 1",
    )
    assert snapshot(device) == before
    assert not (data(device) / "keys").exists()


def test_keyring_rotation_that_leaves_no_usable_key_changes_nothing(device: Device) -> None:
    first_boot(device, "A", config(device, "1.0.0", 1))
    key = device.keyring.keys[0]
    revoked = Keyring(version=2, keys=(TrustedKey(key.id, key.public_key, revoked=True),))
    before = snapshot(device)
    refused(install(device, bundle(device, "1.1.0", 1, keyring=revoked)), 3, "no usable key")
    assert snapshot(device) == before


def test_valid_keyring_rotation_is_stored_after_the_slot(device: Device) -> None:
    first_boot(device, "A", config(device, "1.0.0", 1))
    newer = Keyring(version=2, keys=device.keyring.keys)
    proc = install(device, bundle(device, "1.1.0", 1, keyring=newer))
    assert proc.returncode == 0, proc.stderr
    assert (data(device) / "keys" / "keyring-v1.json").read_bytes() == newer.to_bytes()
    assert device.loader().read() == BootState("A", "B", 1)


def test_keyring_rotation_after_the_slot_image_is_refused_before_it(device: Device) -> None:
    """A bundle written before the writer put the rotation first: it cannot be validated before
    the slot is written, so it is refused untouched (the rotation itself is valid here)."""
    from tests.bundle.kit import Member, assemble, canonical, split_members

    first_boot(device, "A", config(device, "1.0.0", 1))
    path = bundle(device, "1.1.0", 1, keyring=Keyring(version=2, keys=device.keyring.keys))
    members = split_members(path.read_bytes())
    manifest = canonical.decode(members[0].data)
    manifest["payloads"].reverse()  # image first, keyring last (as the old writer did)
    raw = canonical.encode(manifest)
    members = [Member("manifest.json", raw), Member("manifest.sig", device.key.sign(raw))]
    members += reversed(split_members(path.read_bytes())[2:])
    path.write_bytes(assemble(members))
    before = snapshot(device)
    refused(install(device, path), 3, "the keyring rotation comes after the slot image")
    assert snapshot(device) == before


# -- hardening: downgrades within a level, expiry without a clock, the file's length ----------


def test_older_version_at_the_same_level_needs_signed_consent(device: Device) -> None:
    first_boot(device, "A", config(device, "2.0.0", 1))
    before = snapshot(device)
    refused(
        install(device, bundle(device, "1.5.0", 1)),
        4,
        "bundle version 1.5.0 is older than the running 2.0.0 at the same security_version 1",
    )
    assert snapshot(device) == before
    proc = install(device, bundle(device, "1.5.0", 1, allow_downgrade=True))
    assert proc.returncode == 0, proc.stderr
    assert (
        "note: downgrade: 1.5.0 replaces the running 2.0.0 (the signed manifest allows it)"
        in proc.stdout
    )


def test_same_version_and_a_higher_level_install_without_consent(device: Device) -> None:
    first_boot(device, "A", config(device, "2.0.0", 1))
    assert install(device, bundle(device, "2.0.0", 1)).returncode == 0  # a re-install
    first_boot(device, "A", config(device, "2.0.0", 1))
    device.loader().write(BootState("A"))
    assert install(device, bundle(device, "2.0.0-rc.1", 2)).returncode == 0  # a new level


def test_expiry_that_could_not_be_checked_is_said(device: Device) -> None:
    if Path("/run/systemd/timesync/synchronized").exists():
        pytest.skip("this host's clock is synced: expiry is checked")
    first_boot(device, "A", config(device, "1.0.0", 1))
    expiring = bundle(device, "1.1.0", 1, expires=CREATED + 86400)
    before = snapshot(device)
    refused(
        install(device, expiring, "A", f"--trusted-time={CREATED + 2 * 86400}"),
        4,
        f"bundle expired at {CREATED + 86400}",
    )
    assert snapshot(device) == before
    proc = install(device, expiring)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"note: expiry not checked: the bundle expires at {CREATED + 86400} (Unix time) but this "
        "device has no trusted clock" in proc.stdout
    )


@pytest.mark.parametrize(
    "change", [lambda b: b[:-1536], lambda b: b[:-1], lambda b: b + bytes(512), lambda b: b + b"x"]
)
def test_truncated_or_padded_file_is_refused_before_the_slot_is_touched(
    device: Device, change: Callable[[bytes], bytes]
) -> None:
    first_boot(device, "A", config(device, "1.0.0", 1))
    path = bundle(device, "1.1.0", 1)
    good = path.read_bytes()
    path.write_bytes(change(good))
    before = snapshot(device)
    word = "truncated" if len(change(good)) < len(good) else "padded"
    refused(
        install(device, path),
        1,
        f"has {len(change(good))} bytes but its signed manifest describes {len(good)}: the "
        f"file is {word}",
    )
    assert snapshot(device) == before  # the inactive slot keeps its old release


def test_a_damaged_state_file_does_not_stop_the_agent_at_boot(device: Device) -> None:
    config(device, "1.0.0", 1)
    state_path(data(device)).write_bytes(b"not json")
    first_boot(device, "A", config(device, "1.0.0", 1))  # logs the error, raises nothing
    assert state_path(data(device)).read_bytes() == b"not json"  # never silently reset
    assert device.loader().read() == BootState()
