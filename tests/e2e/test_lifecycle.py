"""One device's life in QEMU: first boot, update, power cuts during an update, bad update.

One VM (a qcow2 overlay on the built v1 image, ``cache=writeback`` so a kill loses only what
the guest did not flush) goes through the scenarios in order; each test continues from the disk
the previous one left. The serial console is the channel: the test profile forwards the journal
to ttyS0, so the agent's own lines ("health gate: slot B passed") are what the tests wait for.
Updates arrive as a technician would bring them: a "USB stick" (a FAT drive labelled EK-UPDATE)
plugged in while the device is off; the image's ``edgekiln-usb-update@`` unit installs the bundle
and reboots. Between boots the test reads the disk itself: grubenv on the ESP, results on data,
slot contents against the built images.

Timeouts are hang protection only (TCG on a loaded 2-core machine), never assertions.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from image.vm import Vm, VmConfig
from tests.e2e.device import (
    Build,
    grubenv,
    make_stick,
    partitions,
    provision,
    raw_copy,
    results,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

BOOT_S = 900.0  # one boot under TCG on a busy machine: ~30-90 s
INSTALL_S = 1800.0  # a full slot through the guest's zstd + sha256 under TCG
RUN_S = 20.0  # how long the pipeline runs before the plug is pulled


@dataclass
class Device:
    """The VM plus what the scenarios learned so far."""

    vm: Vm
    work: Path
    builds: dict[str, Build]
    passed: list[str] = field(default_factory=list)

    def boot(self, stick: Path | None = None) -> float:
        """Power on (with a stick plugged in, or none); returns the host time of power-on."""
        self.vm.config.extra_drives = [stick] if stick else []
        started = time.time()
        self.vm.start()
        return started

    def inspect(self, name: str) -> Path:
        """Pull the plug and copy the disk as the guest left it."""
        self.vm.power_cut()
        out = self.work / f"{name}.raw"
        out.unlink(missing_ok=True)
        return raw_copy(self.vm.disk, out)

    def require(self, *scenarios: str) -> None:
        missing = [s for s in scenarios if s not in self.passed]
        if missing:
            pytest.fail(f"needs scenario(s) {', '.join(missing)} to have passed first")


def slot_digest(raw_disk: Path, slot: str) -> str:
    offset, size = partitions(raw_disk)[f"rootfs_{slot.lower()}"]
    digest = hashlib.sha256()
    with raw_disk.open("rb") as handle:
        handle.seek(offset)
        left = size
        while left:
            chunk = handle.read(min(left, 4 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def model_versions(records: list[dict[str, object]]) -> list[object]:
    return [r.get("version") for r in records if r.get("degraded") is False]


@pytest.fixture(scope="module")
def device(builds: dict[str, Build], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    work = tmp_path_factory.mktemp("device")
    disk = provision(builds["1.0.0"].image, work / "v1.img")
    config = VmConfig(disk=disk, overlay=True, cache="writeback", memory_mb=1024, cpus=2)
    vm = Vm(config, workdir=work / "vm")
    try:
        yield Device(vm, work, builds)
    finally:
        vm.power_cut()
        print(f"\nserial console of the e2e device: {vm.serial_log}")


def test_a_first_boot_commits_and_infers(device: Device, figures: dict[str, object]) -> None:
    vm = device.vm
    started = device.boot()
    vm.wait_for(r"health gate: slot A committed", BOOT_S)
    gate_s = time.time() - started
    time.sleep(RUN_S)
    raw = device.inspect("a")
    env = grubenv(raw)
    assert env.get("ek_committed") == "A", env
    records = results(raw, device.work)
    good = [r for r in records if r.get("degraded") is False]
    assert good, f"no inference result on data: {records[:3]}"
    assert good[0].get("model") == "tiny" and good[0].get("version") == "1.0.0", good[0]
    first = float(good[0]["ts"])  # type: ignore[arg-type]
    raw.unlink()  # ~1 GiB allocated
    figures["a_boot_to_gate_s"] = round(gate_s, 1)
    figures["a_boot_to_first_result_s"] = round(first - started, 1)
    device.passed.append("a")


def test_b_update_from_usb_tries_commits_and_runs_v2(
    device: Device, figures: dict[str, object]
) -> None:
    device.require("a")
    vm = device.vm
    v2 = device.builds["2.0.0"]
    stick = make_stick(v2.bundle, device.work / "stick-v2.img")
    started = device.boot(stick)
    vm.wait_for(r"edgekiln-usb-update: installing", BOOT_S)
    installing = time.time()
    vm.wait_for(r"installed 2\.0\.0 into slot B", INSTALL_S)
    figures["b_install_s"] = round(time.time() - installing, 1)
    vm.wait_for(r"health gate: slot B passed", BOOT_S * 2)
    figures["b_power_on_to_v2_committed_s"] = round(time.time() - started, 1)
    # the stick is still in: the same bundle is not installed again
    vm.wait_for(r"already installed from USB: skipped", BOOT_S)
    time.sleep(RUN_S)
    raw = device.inspect("b")
    env = grubenv(raw)
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    built = partitions(v2.image)["rootfs_a"]
    assert slot_digest(raw, "B") == _image_slot_digest(v2.image, built), "slot B is not v2"
    assert model_versions(results(raw, device.work))[-1] == "2.0.0"
    raw.unlink()
    device.passed.append("b")


def _image_slot_digest(image: Path, where: tuple[int, int]) -> str:
    offset, size = where
    digest = hashlib.sha256()
    with image.open("rb") as handle:
        handle.seek(offset)
        left = size
        while left:
            chunk = handle.read(min(left, 4 << 20))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
