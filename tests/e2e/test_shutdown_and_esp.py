"""The power button and the boot partition after power cuts, in QEMU (a device of its own).

A device booted from v1 with slot A copied into slot B and B put on trial (as an install leaves
it), so the agent's health gate writes the boot environment on the ESP when it commits B:

a. the plug is pulled at the agent's first write to the ESP (the environment write of the
   commit): the FAT is left marked dirty;
b. the boot after that cut: fsck.vfat repairs the ESP before it is mounted (no "Volume was not
   properly unmounted" from the kernel), the environment is readable (the agent's gate decides
   from it) and the slot it names boots; then the plug is pulled again while the device idles
   (the ESP is mounted read-write while the device runs: dirty again);
c. the boot after that: repaired again; then the power button (QMP ``system_powerdown``): the
   device powers off by itself, cleanly (the ESP and data unmounted, checked on the host);
d. the boot after the clean shutdown: nothing to repair, the same slot; the button again.

Three boots after the cut, not ten: each starts from one of the three states a device can be in
(a torn environment write, a cut while idle, a clean shutdown); more boots would repeat one of
these with the same bytes on the disk, at ~30-90 s each under TCG.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from image.vm.qemu import Vm, VmConfig
from tests.e2e.device import (
    Build,
    esp_grubenv,
    partitions,
    provision,
    read_partition,
    run,
    set_grubenv,
    write_partition,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    # builds with kiln into the one EDGEKILN_CACHE: one worker (tests/README.md)
    pytest.mark.xdist_group("e2e-kiln"),
]

BOOT_S = 900.0  # one boot under TCG on a busy machine: ~30-90 s; hang protection only
#: the bound for a clean shutdown after the button (systemd's default stop timeout is 90 s
#: per unit; the agent stops on SIGTERM)
SHUTDOWN_S = 180.0
DIRTY = "Dirty bit is set"
KERNEL_WARNING = "Volume was not properly unmounted"
AGENT_STARTING = r"Starting edgekiln-agent\.service"


@dataclass
class EspDevice:
    vm: Vm
    work: Path
    layout: dict[str, tuple[int, int]]
    passed: list[str] = field(default_factory=list)
    #: the slot the environment named committed after the cut
    slot: str = ""

    def part(self, name: str) -> Path:
        return read_partition(self.vm.disk, self.layout[name], self.work / f"{name}.part")

    def fsck_esp(self) -> str:
        """``fsck.vfat -n`` (no change) of the ESP as the disk holds it now: its report."""
        esp = self.part("boot")
        try:
            proc = subprocess.run(["fsck.vfat", "-n", str(esp)], capture_output=True, check=False)
            return f"exit {proc.returncode}\n{proc.stdout.decode()}{proc.stderr.decode()}"
        finally:
            esp.unlink()

    def env(self) -> dict[str, str]:
        esp = self.part("boot")
        try:
            return esp_grubenv(esp)
        finally:
            esp.unlink()

    def data_state(self) -> str:
        """The data partition's ext4 superblock state (``dumpe2fs -h``): state and features."""
        data = self.part("data")
        try:
            return run(["dumpe2fs", "-h", str(data)]).stdout.decode()
        finally:
            data.unlink()

    def require(self, *steps: str) -> None:
        missing = [s for s in steps if s not in self.passed]
        if missing:
            pytest.fail(f"needs step(s) {', '.join(missing)} to have passed first")


def _copy_partition(disk: Path, src: tuple[int, int], dst: tuple[int, int]) -> None:
    mib = 1024 * 1024
    assert src[1] == dst[1], "slots of different sizes"
    run(
        ["dd", f"if={disk}", f"of={disk}", "bs=1M", f"skip={src[0] // mib}",
         f"seek={dst[0] // mib}", f"count={src[1] // mib}", "conv=notrunc,sparse", "status=none"]
    )  # fmt: skip


@pytest.fixture(scope="module")
def esp_device(
    builds: Mapping[str, Build], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EspDevice]:
    work = tmp_path_factory.mktemp("esp-device")
    disk = provision(builds["1.0.0"].image, work / "v1.img")
    layout = partitions(disk)
    # slot B = slot A, on trial: GRUB boots it once and the agent's gate commits it
    _copy_partition(disk, layout["rootfs_a"], layout["rootfs_b"])
    esp = read_partition(disk, layout["boot"], work / "boot.part")
    set_grubenv(esp, {"ek_try": "B", "ek_tries_left": "1"}, work)
    write_partition(esp, disk, layout["boot"])
    esp.unlink()
    config = VmConfig(
        disk=disk,
        overlay=True,
        cache="writeback",  # a kill loses only what the guest did not flush
        trace_writes=True,
        relaunch_on_reset=True,
    )
    vm = Vm(config, workdir=work / "vm")
    try:
        yield EspDevice(vm, work, layout)
    finally:
        vm.power_cut()
        print(f"\nserial console of the ESP device: {vm.serial_log}")


def _booted_slot(vm: Vm) -> str:
    match = vm.wait_for(r"Command line:.*edgekiln\.slot=([AB])\b", BOOT_S)
    return match.group(1)


def _gate(vm: Vm, slot: str) -> None:
    vm.wait_for(rf"health gate: slot {slot} (committed|passed)", BOOT_S)


def _press_power_button(device: EspDevice, figures: dict[str, object], key: str) -> None:
    """QMP ``system_powerdown`` (the ACPI power button); the guest must power itself off."""
    vm = device.vm
    pressed = time.monotonic()
    vm.qmp("system_powerdown")
    status = vm.wait_exit(SHUTDOWN_S)
    figures[key] = round(time.monotonic() - pressed, 1)
    console = vm.console()
    assert status == 0, f"QEMU exit status {status}"
    # systemd stopped the services and unmounted what it mounted, then powered off
    assert re.search(r"Unmounted (boot-efi|data)\.mount", console), console[-3000:]
    assert "All filesystems unmounted" in console, console[-3000:]
    assert "reboot: Power down" in console, console[-3000:]
    report = device.fsck_esp()
    assert report.startswith("exit 0") and DIRTY not in report, report
    state = device.data_state()
    assert re.search(r"Filesystem state:\s+clean$", state, re.M), state
    assert "needs_recovery" not in state, state


def test_a_power_cut_during_the_environment_write(
    esp_device: EspDevice, figures: dict[str, object]
) -> None:
    """Slot B on trial; the plug is pulled at the agent's first write to the ESP (committing B)."""
    vm = esp_device.vm
    vm.start()
    assert _booted_slot(vm) == "B"
    vm.wait_for(r"edgekiln\.trial=1", BOOT_S)
    vm.wait_for(AGENT_STARTING, BOOT_S)
    # every ESP write from here on is the agent's (the mount and its fsck came before)
    mark = vm.trace_mark()
    offset, size = esp_device.layout["boot"]
    written = vm.wait_write(offset, offset + size, BOOT_S, min_bytes=1, since=mark)
    vm.power_cut()
    figures["esp_cut"] = f"agent's first ESP write ({written} bytes)"
    report = esp_device.fsck_esp()
    assert DIRTY in report, f"the cut left the ESP clean: nothing to test\n{report}"
    esp_device.passed.append("a")


def _boot_and_check(esp_device: EspDevice, *, repaired: bool) -> str:
    """Power on; the ESP is checked before its mount (repaired or clean), the environment is
    read and the slot it names committed boots. Returns that slot."""
    vm = esp_device.vm
    vm.start()
    slot = _booted_slot(vm)
    _gate(vm, slot)
    console = vm.console()
    assert KERNEL_WARNING not in console, "the ESP was mounted without being checked"
    # fsck.vfat's own report (systemd-fsck's output reaches the console through the journal)
    assert (DIRTY in console) == repaired, console[-4000:]
    env = esp_device.env()
    assert env.get("ek_committed") == slot and not env.get("ek_try"), (slot, env)
    return slot


def test_b_boot_after_the_cut_repairs_the_esp(
    esp_device: EspDevice, figures: dict[str, object]
) -> None:
    esp_device.require("a")
    started = time.monotonic()
    esp_device.slot = _boot_and_check(esp_device, repaired=True)
    figures["esp_boot_after_cut_to_gate_s"] = round(time.monotonic() - started, 1)
    figures["esp_slot_after_cut"] = esp_device.slot
    # the plug pulled while the device idles: the ESP is mounted read-write, so dirty again
    esp_device.vm.power_cut()
    assert DIRTY in esp_device.fsck_esp()
    esp_device.passed.append("b")


def test_c_power_button_shuts_the_device_down_cleanly(
    esp_device: EspDevice, figures: dict[str, object]
) -> None:
    esp_device.require("b")
    assert _boot_and_check(esp_device, repaired=True) == esp_device.slot
    _press_power_button(esp_device, figures, "power_button_to_off_s")
    esp_device.passed.append("c")


def test_d_boot_after_a_clean_shutdown_has_nothing_to_repair(
    esp_device: EspDevice, figures: dict[str, object]
) -> None:
    esp_device.require("c")
    assert _boot_and_check(esp_device, repaired=False) == esp_device.slot
    _press_power_button(esp_device, figures, "power_button_to_off_clean_boot_s")
    esp_device.passed.append("d")
