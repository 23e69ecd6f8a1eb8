"""A Jetson's update cycle through the real installer and the agent's health gate, on L4T slots.

The device: two slot image files, a data directory, the running slot's device.json and a
stand-in ``nvbootctrl`` on PATH (fake_nvbootctrl.py: L4T's slot variables in a file; ``boot``
plays UEFI). ``appliance install`` runs as the device's units run it: the loader from
``$EDGEKILN_SLOTS=nvbootctrl:...``, the booted slot from ``nvbootctrl get-current-slot`` (L4T
puts no ``edgekiln.slot=`` on the command line). The agent's part is
``appliance.supervisor.health.health_gate`` with the booted slot read the same way.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bundle import PayloadSource, write_bundle
from appliance.slots import control
from appliance.slots.booted import booted_slot
from appliance.slots.config import open_loader
from appliance.slots.state import BootState
from appliance.state import load_state
from appliance.supervisor.health import HealthReport, health_gate
from tools.powercut import CHUNK, PRODUCT, TARGET, Device

from .fake_nvbootctrl import boot, install, load

pytestmark = pytest.mark.slow  # each test runs the appliance command a few times (~5-15 s)
APPLIANCE = str(Path(sys.executable).parent / "appliance")


@pytest.fixture
def jetson(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Device:
    dev = Device(tmp_path / "device")
    dev.reset()
    (dev.root / "keyring.json").write_bytes(dev.keyring.to_bytes())
    install(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NVBOOTCTRL_STATE", str(dev.root / "l4t.json"))
    monkeypatch.setenv("FAKE_NVBOOTCTRL_LOG", str(dev.root / "nvbootctrl.log"))
    monkeypatch.setenv("EDGEKILN_SLOTS", f"nvbootctrl:{dev.root / 'data' / 'slots-l4t.env'}")
    monkeypatch.setenv("EDGEKILN_DEVICE_CONFIG", str(dev.root / "device.json"))
    for name in ("EDGEKILN_DATA", "EDGEKILN_BOOTED_SLOT"):
        monkeypatch.delenv(name, raising=False)
    running(dev, "1.0.0")
    return dev


def running(dev: Device, version: str) -> None:
    """The booted slot's device.json."""
    doc = {
        "product": PRODUCT,
        "target": TARGET,
        "version": version,
        "security_version": 1,
        "data_dir": str(dev.root / "data"),
    }
    (dev.root / "device.json").write_text(json.dumps(doc))


def bundle(dev: Device, version: str, image: bytes) -> Path:
    out = io.BytesIO()
    write_bundle(
        out, key=dev.key, product=PRODUCT, targets=[TARGET], version=version,
        security_version=1, created=1_750_000_000,
        payloads=[PayloadSource("rootfs.img", "full", image, "none")], chunk_size=CHUNK,
    )  # fmt: skip
    path = dev.root / f"{version}.bundle"
    path.write_bytes(out.getvalue())
    return path


def appliance_install(dev: Device, path: Path) -> subprocess.CompletedProcess[str]:
    """``appliance install`` with neither --loader nor --booted: what the device works out."""
    argv = [
        APPLIANCE, "install", str(path), f"--keyring={dev.root / 'keyring.json'}",
        f"--slot=A={dev.slots['A']}", f"--slot=B={dev.slots['B']}",
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def calls(dev: Device) -> list[str]:
    lines = (dev.root / "nvbootctrl.log").read_text().splitlines()
    return [c for c in lines if "dump-slots-info" not in c and "get-current-slot" not in c]


def gate(dev: Device, passed: bool, reboots: list[str]) -> str:
    """The agent at boot: reconcile, then the health gate for a slot on trial."""
    check = HealthReport(passed, [] if passed else ["self-test: top-1 wrong"], {})
    return health_gate(
        open_loader(), booted_slot(), dev.root / "data", lambda: check,
        lambda: reboots.append("reboot"),
    )  # fmt: skip


def test_install_try_commit_then_a_failed_gate_returns_to_the_committed_slot(
    jetson: Device,
) -> None:
    dev, l4t, reboots = jetson, jetson.root / "l4t.json", []
    assert boot(l4t) == 0  # the factory boot: slot A (APP)
    assert gate(dev, True, reboots) == "committed"
    assert load_state(dev.root / "data").committed.slot == "A"  # type: ignore[union-attr]

    proc = appliance_install(dev, bundle(dev, "2.0.0", dev.v2))
    assert proc.returncode == 0, proc.stderr
    assert dev.slots["B"].read_bytes() == dev.v2
    assert open_loader().read() == BootState("A", "B", 1)
    assert calls(dev) == ["-t rootfs set-slot-as-unbootable 1", "-t rootfs set-active-boot-slot 1"]

    assert boot(l4t) == 1  # UEFI boots APP_b
    running(dev, "2.0.0")
    assert gate(dev, True, reboots) == "passed"
    assert calls(dev)[-1] == "-t rootfs mark-boot-successful"
    assert open_loader().read() == BootState("B")
    state = load_state(dev.root / "data")
    assert state.committed is not None and (state.committed.slot, state.committed.version) == (
        "B",
        "2.0.0",
    )

    # v3 into A; its health gate fails: A unbootable, B active again, one reboot asked for.
    proc = appliance_install(dev, bundle(dev, "3.0.0", bytes(reversed(dev.v2))))
    assert proc.returncode == 0, proc.stderr
    assert boot(l4t) == 0
    running(dev, "3.0.0")
    assert gate(dev, False, reboots) == "failed" and reboots == ["reboot"]
    assert calls(dev)[-2:] == [
        "-t rootfs set-slot-as-unbootable 0",
        "-t rootfs set-active-boot-slot 1",
    ]
    assert boot(l4t) == 1
    running(dev, "2.0.0")
    assert gate(dev, True, reboots) == "committed"
    assert open_loader().read() == BootState("B", None, 0, frozenset({"A"}))
    assert load_state(dev.root / "data").installed is None  # the failed install is forgotten


def test_a_try_that_never_boots_is_given_up_by_l4t_and_marked_bad(jetson: Device) -> None:
    dev, l4t, reboots = jetson, jetson.root / "l4t.json", []
    boot(l4t)
    gate(dev, True, reboots)
    assert appliance_install(dev, bundle(dev, "2.0.0", dev.v2)).returncode == 0
    for _ in range(3):  # a kernel panic each time: UEFI counts B down, then falls back
        assert boot(l4t, fails=True) == 1
    assert boot(l4t) == 0
    assert gate(dev, True, reboots) == "committed" and reboots == []
    assert open_loader().read() == BootState("A", None, 0, frozenset({"B"}))
    assert load(l4t)["active"] == 0
    assert load_state(dev.root / "data").installed is None
    # The next install into B works: set-active-boot-slot makes it bootable again.
    assert appliance_install(dev, bundle(dev, "2.0.1", dev.v2)).returncode == 0
    assert open_loader().read() == BootState("A", "B", 1)


def test_installer_refuses_while_the_running_slot_is_on_trial(jetson: Device) -> None:
    dev, l4t = jetson, jetson.root / "l4t.json"
    boot(l4t)
    gate(dev, True, [])
    assert appliance_install(dev, bundle(dev, "2.0.0", dev.v2)).returncode == 0
    boot(l4t)  # B on trial, not yet committed
    before = dev.slots["A"].read_bytes()
    proc = appliance_install(dev, bundle(dev, "3.0.0", bytes(reversed(dev.v2))))
    assert proc.returncode != 0 and "not committed yet" in proc.stderr, proc.stderr
    assert dev.slots["A"].read_bytes() == before
    control.reconcile(open_loader(), "B", dev.root / "data")  # still on trial: nothing changes
    assert open_loader().read() == BootState("A", "B", 0)
