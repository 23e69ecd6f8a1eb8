"""One device's life in QEMU: first boot, update, power cuts during an update, bad update.

One VM (a qcow2 overlay on the built v1 image, ``cache=writeback`` so a kill loses only what
the guest did not flush) goes through the scenarios in order; each test continues from the
machine the previous one left, running or not, so no state is reached twice:

a. power on v1: slot A committed, results on data;
b. plug a USB stick holding v2 into the running device: installed into B, reboot, B tried,
   passes, committed; the stick left in is not installed again;
d1. plug a v3 stick into the running v2 and pull the plug when the installer writes grubenv
   (marking slot A not bootable);
e. while it is off, point the camera config at a damaged primary model package; power on with
   the stick still in: v2 boots committed (d1's check), the agent runs the fallback model and
   reports why; the v3 install starts again;
d2. pull the plug once 256 MiB of slot A are written; set the config back; power on: v2 boots
   committed, and the install starts again;
c. it completes; v3 (its primary model fails its reference check) is tried in A, fails its
   health gate, and the device reboots into B by itself.

The channels are the serial console (the test profile forwards the journal to ttyS0, so the
agent's own lines, e.g. "health gate: slot B passed", are what the tests wait for), the guest's
disk writes as QEMU sees them (``VmConfig(trace_writes=True)``: the power cuts are placed by the
byte ranges the guest writes, not by timers) and the disk itself, read while the VM runs
(``qemu-img -U``): grubenv on the ESP, results on data, slot bytes against the built images.

Timeouts are hang protection only (TCG on a loaded 2-core machine), never assertions.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from image.vm import Vm, VmConfig
from tests.e2e.device import (
    BROKEN_ON_DATA,
    EVENTS,
    PIPELINE,
    RESULTS,
    Build,
    esp_grubenv,
    ext4_file,
    make_stick,
    parse_results,
    partitions,
    provision,
    read_partition,
    run,
    same_bytes,
    write_broken_primary,
    write_partition,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

BOOT_S = 900.0  # one boot under TCG on a busy machine: ~30-90 s
INSTALL_S = 1800.0  # a full slot through the guest's zstd + sha256 under TCG
RESULT_POLL_S = 3.0  # how often the data partition is read while waiting for results

Records = list[dict[str, object]]


@dataclass
class Device:
    """The VM plus what the scenarios learned so far."""

    vm: Vm
    work: Path
    builds: Mapping[str, Build]
    #: partition name -> (byte offset, size) on the device's disk (v1's GPT: never rewritten)
    layout: dict[str, tuple[int, int]]
    passed: list[str] = field(default_factory=list)
    #: the v3 stick (d plugs it in and leaves it in)
    stick_v3: Path | None = None
    #: seconds from power-on to the health gate's line, for boots of the committed v2
    boots_to_gate: list[float] = field(default_factory=list)

    def power_on(self, stick: Path | None = None) -> float:
        """Pull the plug if it runs, then power on (with a stick in, or none); returns the host
        time of power-on."""
        self.vm.power_cut()
        self.vm.config.extra_drives = [stick] if stick else []
        started = time.time()
        self.vm.start()
        return started

    def region(self, name: str) -> tuple[int, int]:
        """Byte range [start, end) of a partition on the device's disk."""
        offset, size = self.layout[name]
        return offset, offset + size

    def env(self) -> dict[str, str]:
        """grubenv as the disk holds it now (the guest fsyncs it before logging a decision)."""
        esp = read_partition(self.vm.disk, self.layout["boot"], self.work / "esp.part")
        try:
            return esp_grubenv(esp)
        finally:
            esp.unlink()

    def results(self, path: str = RESULTS) -> Records:
        """A JSON-lines file (default: the results) as the data partition holds it now (the
        results sink fsyncs each second)."""
        data = read_partition(self.vm.disk, self.layout["data"], self.work / "data.part")
        try:
            return parse_results(ext4_file(data, path, self.work) or b"")
        finally:
            data.unlink()

    def wait_results(
        self, ready: Callable[[Records], bool], timeout: float, path: str = RESULTS
    ) -> Records:
        """Read the data partition until the results (or another JSON-lines file whose
        writes are not fsynced, e.g. the agent's events: the kernel writes them back within
        ~35 s) satisfy ``ready``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                records = self.results(path)
            except AssertionError:  # read mid-write and not repairable: read again
                records = []
            if ready(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"results not ready within {timeout:.0f} s: {records[-3:]}")
            time.sleep(RESULT_POLL_S)

    def slot_holds(self, slot: str, build: Build) -> bool:
        """Whether a slot of the device holds the bytes of ``build``'s slot image."""
        built = partitions(build.image)["rootfs_a"]
        return same_bytes(self.vm.disk, self.layout[f"rootfs_{slot.lower()}"], build.image, built)

    def require(self, *scenarios: str) -> None:
        missing = [s for s in scenarios if s not in self.passed]
        if missing:
            pytest.fail(f"needs scenario(s) {', '.join(missing)} to have passed first")


def good_versions(records: Records) -> list[object]:
    """Model versions of the results the primary model produced (not degraded)."""
    return [r.get("version") for r in records if r.get("degraded") is False]


def fallbacks(records: Records) -> Records:
    """The fallback events among records."""
    return [r for r in records if r.get("type") == "event" and r.get("kind") == "fallback"]


def after(records: Records, host_time: float) -> Records:
    """Records stamped after ``host_time`` (the guest's clock is the host's, via the RTC).

    Results and pipeline events carry ``ts``, the supervisor's own events ``time``.
    """
    return [r for r in records if float(r.get("ts", r.get("time", 0))) > host_time]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def device(
    builds: Mapping[str, Build], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Device]:
    work = tmp_path_factory.mktemp("device")
    disk = provision(builds["1.0.0"].image, work / "v1.img")
    config = VmConfig(
        disk=disk,
        overlay=True,
        cache="writeback",
        memory_mb=1024,
        cpus=2,
        trace_writes=True,
        usb=True,
        relaunch_on_reset=True,  # a warm reset under TCG sometimes hangs in OVMF
    )
    vm = Vm(config, workdir=work / "vm")
    try:
        yield Device(vm, work, builds, partitions(disk))
    finally:
        vm.power_cut()
        print(f"\nserial console of the e2e device: {vm.serial_log}")


def test_a_first_boot_commits_and_infers(device: Device, figures: dict[str, object]) -> None:
    vm = device.vm
    started = device.power_on()
    vm.wait_for(r"health gate: slot A committed", BOOT_S)
    gate_s = time.time() - started
    records = device.wait_results(lambda r: bool(good_versions(r)), BOOT_S)
    good = [r for r in records if r.get("degraded") is False]
    assert good[0].get("model") == "tiny" and good[0].get("version") == "1.0.0", good[0]
    env = device.env()
    assert env.get("ek_committed") == "A" and not env.get("ek_try"), env
    first = float(good[0]["ts"])  # type: ignore[arg-type]
    figures["a_boot_to_gate_s"] = round(gate_s, 1)
    figures["a_boot_to_first_result_s"] = round(first - started, 1)
    device.passed.append("a")


def test_b_update_from_usb_tries_commits_and_runs_v2(
    device: Device, figures: dict[str, object]
) -> None:
    """A technician plugs a stick holding v2 into the running v1."""
    device.require("a")
    vm = device.vm
    v2 = device.builds["2.0.0"]
    stick = make_stick(v2.bundle, device.work / "stick-v2.img")
    plugged = time.time()
    vm.plug_usb(stick)
    vm.wait_for(r"edgekiln-usb-update: installing \S+-2\.0\.0\.bundle", BOOT_S)
    installing = time.time()
    vm.wait_for(r"installed 2\.0\.0 into slot B", INSTALL_S)
    figures["b_install_s"] = round(time.time() - installing, 1)
    vm.wait_for(r"health gate: slot B passed", BOOT_S * 2)
    figures["b_plug_to_v2_committed_s"] = round(time.time() - plugged, 1)
    # the stick is still in: the same bundle is not installed again
    vm.wait_for(r"already installed from USB: skipped", BOOT_S)
    device.wait_results(lambda r: good_versions(r)[-1:] == ["2.0.0"], BOOT_S)
    env = device.env()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    assert device.slot_holds("B", v2), "slot B does not hold v2's slot image"
    device.passed.append("b")


INSTALLING_V3 = r"edgekiln-usb-update: installing \S+-3\.0\.0\.bundle"
#: the second cut: once this much of slot A is written (of 1280 MiB; the sink writes all bytes)
SLOT_CUT_BYTES = 256 << 20


def _cut_when_written(device: Device, partition: str, at_least: int) -> int:
    """Once the v3 install started, pull the plug when the guest has written ``at_least`` bytes
    into ``partition``."""
    vm = device.vm
    vm.wait_for(INSTALLING_V3, BOOT_S)
    # The line is echoed before the frozen installer starts (seconds under TCG): every write
    # the install makes comes after this mark, and what the boot wrote before (the FAT's
    # dirty flag when the ESP was mounted, b's commit) comes before it.
    mark = vm.trace_mark()
    written = vm.wait_write(*device.region(partition), INSTALL_S, min_bytes=at_least, since=mark)
    vm.power_cut()
    assert "installed 3.0.0 into slot A" not in vm.console(), "the cut came after the install"
    return written


def _boot_runs_v2(device: Device) -> None:
    """Power on with the stick in: the committed v2 (slot B) boots (the install starts again)."""
    assert device.stick_v3 is not None
    started = device.power_on(device.stick_v3)
    device.vm.wait_for(r"health gate: slot B committed", BOOT_S)
    device.boots_to_gate.append(round(time.time() - started, 1))
    env = device.env()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env


def test_d1_power_cut_while_the_installer_writes_grubenv(
    device: Device, figures: dict[str, object]
) -> None:
    """A v3 stick plugged into the running v2; the plug is pulled at the installer's first ESP
    write (grubenv: slot A not bootable). The next boot is e's (the stick stays in)."""
    device.require("b")
    vm = device.vm
    device.stick_v3 = make_stick(device.builds["3.0.0"].bundle, device.work / "stick-v3.img")
    vm.plug_usb(device.stick_v3)
    written = _cut_when_written(device, "boot", 1)
    figures["d_cut_1"] = f"installer's first grubenv write ({written} bytes on the ESP)"
    device.passed.append("d1")


def test_e_broken_primary_model_runs_the_fallback_and_says_why(
    device: Device, figures: dict[str, object]
) -> None:
    """While the device is off after d's first cut, its pipeline config is pointed at a primary
    package whose model file is damaged. The next boot (stick still in) runs v2 (d's check), and
    the agent runs the fallback model and reports why (events in the results and its log)."""
    device.require("d1")
    broken = write_broken_primary(device.work / "broken")
    edit_data(device, {**PIPELINE, "model": f"/data{BROKEN_ON_DATA}"}, broken)
    started = time.time()
    _boot_runs_v2(device)
    device.passed.append("d1-next-boot")
    records = device.wait_results(
        lambda r: any(x.get("model") == "tiny-fallback" for x in after(r, started)), BOOT_S
    )
    fresh = after(records, started)
    events = fallbacks(fresh)
    # the event names the package that failed and why
    assert events and str(events[0].get("model")).endswith(BROKEN_ON_DATA), fresh[:5]
    assert events[0].get("reason"), events[0]
    # ... and so does the agent's event log
    log = device.wait_results(lambda r: bool(fallbacks(after(r, started))), BOOT_S, EVENTS)
    assert str(fallbacks(after(log, started))[0].get("model")).endswith(BROKEN_ON_DATA), log
    good = [r for r in fresh if r.get("degraded") is False]
    assert good and {r.get("model") for r in good} == {"tiny-fallback"}, good[:3]
    first = float(good[0]["ts"])  # type: ignore[arg-type]
    figures["e_power_on_to_fallback_result_s"] = round(first - started, 1)
    device.passed.append("e")


def test_d2_power_cut_while_the_installer_writes_slot_a(
    device: Device, figures: dict[str, object]
) -> None:
    """The install started again (stick still in); the plug is pulled once 256 MiB of slot A
    are written. The camera config is set back while the device is off; the next boot runs v2
    and starts the install again, which c lets finish."""
    device.require("d1-next-boot")
    written = _cut_when_written(device, "rootfs_a", SLOT_CUT_BYTES)
    figures["d_cut_2"] = f"slot A write ({written >> 20} MiB written there)"
    edit_data(device, PIPELINE, None)
    _boot_runs_v2(device)
    figures["d_power_cuts_survived"] = "2/2"
    figures["d_boot_to_gate_s"] = device.boots_to_gate
    device.passed.append("d")


def edit_data(device: Device, pipeline: dict[str, object], package: Path | None) -> None:
    """What a technician changes on data, done to the powered-off device's disk: the pipeline
    config, and a model package copied to ``BROKEN_ON_DATA``."""
    assert not device.vm.running
    work = device.work
    data = read_partition(device.vm.disk, device.layout["data"], work / "data.part")
    config = work / "pipeline.json"
    config.write_text(json.dumps(pipeline, indent=2))
    # debugfs's write never replaces a file (and still exits 0): remove the old one first
    lines = ["rm /edgekiln/pipeline.json", f"write {config} /edgekiln/pipeline.json"]
    if package is not None:
        lines += [f"mkdir {Path(BROKEN_ON_DATA).parent}", f"mkdir {BROKEN_ON_DATA}"]
        lines += [f"write {f} {BROKEN_ON_DATA}/{f.name}" for f in sorted(package.iterdir())]
    script = work / "edit.debugfs"
    script.write_text("\n".join(lines) + "\n")
    # replay the journal first, as the next mount would: a write into a file system whose
    # journal still holds newer blocks would be undone by that replay
    proc = subprocess.run(["e2fsck", "-fy", str(data)], capture_output=True, check=False)
    assert proc.returncode < 4, f"e2fsck of the data partition failed: {proc.stdout.decode()}"
    run(["debugfs", "-w", "-f", str(script), str(data)])
    written = run(["debugfs", "-R", "cat /edgekiln/pipeline.json", str(data)]).stdout
    assert json.loads(written) == pipeline, "pipeline.json not written"
    write_partition(data, device.vm.disk, device.layout["data"])
    data.unlink()


def test_c_broken_v3_rolls_back_to_v2(device: Device, figures: dict[str, object]) -> None:
    """v3 installs, is tried, fails its health gate; the device returns to v2 by itself."""
    device.require("b")
    vm = device.vm
    v3 = device.builds["3.0.0"]
    if "d" not in device.passed:  # start where b left off, with the v3 stick in
        device.power_on(make_stick(v3.bundle, device.work / "stick-v3.img"))
    vm.wait_for(r"installed 3\.0\.0 into slot A", INSTALL_S)
    # logged before the gate asks for the reboot (its "health gate: slot A failed" summary line
    # races the shutdown and is often lost)
    failed = vm.wait_for(r"slot A failed its health check", BOOT_S * 2)
    failed_at = time.time()
    vm.wait_for(r"health gate: slot B committed", BOOT_S * 2, since=failed.end())
    figures["c_failed_check_to_old_slot_s"] = round(time.time() - failed_at, 1)
    vm.wait_for(r"already installed from USB: skipped", BOOT_S, since=failed.end())
    # results produced after the rollback come from v2's model
    device.wait_results(lambda r: good_versions(after(r, failed_at)) != [], BOOT_S)
    assert set(good_versions(after(device.results(), failed_at))) == {"2.0.0"}
    env = device.env()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    assert "A" in env.get("ek_bad", ""), env
    assert device.slot_holds("B", device.builds["2.0.0"]), "slot B no longer holds v2"
    device.passed.append("c")
