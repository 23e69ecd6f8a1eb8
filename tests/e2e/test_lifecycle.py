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
   health gate, and the device reboots into B by itself;
f. while it is off, A is put on trial again with its agent masked and a 30 s trial deadline:
   power on: nothing commits A, its boot deadline marks it bad and reboots into B;
e (watchdog). that boot of B runs a camera config whose primary model file is a pipe nobody
   writes: the worker hangs, is killed and restarted with backoff, then the fallback model runs.

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

from image.vm.qemu import Vm, VmConfig
from tests.e2e.device import (
    BROKEN_ON_DATA,
    EVENTS,
    HUNG_ON_DATA,
    PIPELINE,
    RESULTS,
    Build,
    debugfs_script,
    esp_grubenv,
    ext4_file,
    make_models,
    make_stick,
    package_lines,
    parse_results,
    partitions,
    provision,
    read_partition,
    run,
    same_bytes,
    set_grubenv,
    write_broken_primary,
    write_partition,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    # builds with kiln into the one EDGEKILN_CACHE: one worker (tests/README.md)
    pytest.mark.xdist_group("e2e-kiln"),
]

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
    #: JSON-lines file on data -> how many records it held at the last power-on
    on_disk: dict[str, int] = field(default_factory=dict)
    #: (offset, size) of the data partition now, when it is not v1's GPT entry (the hands-off
    #: device's grows to the end of a larger overlay on its first boot)
    data_where: Callable[[], tuple[int, int]] | None = None

    def data_region(self) -> tuple[int, int]:
        """(byte offset, size) of the data partition as the disk holds it now."""
        return self.data_where() if self.data_where else self.layout["data"]

    def power_on(self, stick: Path | None = None) -> float:
        """Pull the plug if it runs, then power on (with a stick in, or none); returns the host
        time of power-on.

        First counts the records the results and events files hold: ``since_power_on`` tells
        this boot's records from older ones by position, not by the guest's clock (under TCG
        on a busy host it ran seconds ahead of the host's, so the last records before a power
        cut looked newer than the next power-on).
        """
        self.vm.power_cut()
        data = read_partition(self.vm.disk, self.data_region(), self.work / "data.part")
        try:
            self.on_disk = {
                path: len(parse_results(ext4_file(data, path, self.work) or b""))
                for path in (RESULTS, EVENTS)
            }
        finally:
            data.unlink()
        self.vm.config.extra_drives = [stick] if stick else []
        started = time.time()
        self.vm.start()
        return started

    def since_power_on(self, records: Records, path: str = RESULTS) -> Records:
        """The records of ``path`` written since the last ``power_on``."""
        return records[self.on_disk.get(path, 0) :]

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
        data = read_partition(self.vm.disk, self.data_region(), self.work / "data.part")
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

    def edit_data(self, pipeline: dict[str, object], lines: list[str]) -> None:
        """Write the pipeline config (and run debugfs ``lines``) on the powered-off device's
        data partition."""
        assert not self.vm.running
        data = read_partition(self.vm.disk, self.layout["data"], self.work / "data.part")
        config = self.work / "pipeline.json"
        config.write_text(json.dumps(pipeline, indent=2))
        # replay the journal first, as the next mount would: a write into a file system whose
        # journal still holds newer blocks would be undone by that replay
        proc = subprocess.run(["e2fsck", "-fy", str(data)], capture_output=True, check=False)
        assert proc.returncode < 4, f"e2fsck of the data partition failed: {proc.stdout.decode()}"
        # debugfs's write never replaces a file (and still exits 0): remove the old one first
        edit = ["rm /edgekiln/pipeline.json", f"write {config} /edgekiln/pipeline.json", *lines]
        debugfs_script(data, edit, self.work)
        written = run(["debugfs", "-R", "cat /edgekiln/pipeline.json", str(data)]).stdout
        assert json.loads(written) == pipeline, "pipeline.json not written"
        write_partition(data, self.vm.disk, self.layout["data"])
        data.unlink()

    def edit_slot(self, slot: str, lines: list[str]) -> str:
        """Run debugfs ``lines`` on a slot's (journal-less) ext4 of the powered-off device;
        returns debugfs's output."""
        assert not self.vm.running
        where = self.layout[f"rootfs_{slot.lower()}"]
        part = read_partition(self.vm.disk, where, self.work / "slot.part")
        try:
            out = debugfs_script(part, lines, self.work)
            write_partition(part, self.vm.disk, where)
            return out
        finally:
            part.unlink()

    def set_env(self, values: dict[str, str]) -> dict[str, str]:
        """Set grubenv variables (both copies) on the powered-off device's ESP."""
        assert not self.vm.running
        esp = read_partition(self.vm.disk, self.layout["boot"], self.work / "esp.part")
        try:
            env = set_grubenv(esp, values, self.work)
            write_partition(esp, self.vm.disk, self.layout["boot"])
            return env
        finally:
            esp.unlink()

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
    # v1's image stays: the ESP and power-button device (test_shutdown_and_esp.py) boots it too
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
    assert good[0].get("model") == "inspect-primary" and good[0].get("version") == "1.0.0", good[0]
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
        lambda r: any(x.get("model") == "inspect-fallback" for x in device.since_power_on(r)),
        BOOT_S,
    )
    fresh = device.since_power_on(records)
    events = fallbacks(fresh)
    # the event names the package that failed and why
    assert events and str(events[0].get("model")).endswith(BROKEN_ON_DATA), fresh[:5]
    assert events[0].get("reason"), events[0]
    # ... and so does the agent's event log
    log = device.wait_results(
        lambda r: bool(fallbacks(device.since_power_on(r, EVENTS))), BOOT_S, EVENTS
    )
    assert str(fallbacks(device.since_power_on(log, EVENTS))[0].get("model")).endswith(
        BROKEN_ON_DATA
    ), log
    good = [r for r in fresh if r.get("degraded") is False]
    assert good and {r.get("model") for r in good} == {"inspect-fallback"}, good[:3]
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
    lines = package_lines(package, BROKEN_ON_DATA) if package is not None else []
    device.edit_data(pipeline, lines)


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


#: the trial deadline of the deadline scenario (the image's is 10 min: a tried slot gets that
#: long to pass its health gate on slow hardware)
DEADLINE_S = 30
DEADLINE_DROPIN = "/etc/systemd/system/edgekiln-trial-deadline.timer.d"
AGENT_UNIT = "/etc/systemd/system/edgekiln-agent.service"
#: the camera config of the hang scenario: the primary package's model file never arrives
HUNG_PIPELINE = {**PIPELINE, "model": f"/data{HUNG_ON_DATA}"}


def _arm_hung_primary(device: Device) -> None:
    """On the powered-off device's data: point the camera config at a primary package whose
    model file is a named pipe nobody writes (a read that never returns, as from a stuck
    storage device); the fallback model stays v2's own."""
    primary, _ = make_models(device.work / "hung", "2.0.0")
    device.edit_data(HUNG_PIPELINE, package_lines(primary, HUNG_ON_DATA, fifos=("model.onnx",)))


def test_f_tried_slot_whose_agent_never_starts_falls_back_by_its_deadline(
    device: Device, figures: dict[str, object]
) -> None:
    """After c, while the device is off: slot A (v3) is put on trial again, as an install
    leaves it, and its agent unit is masked, so nothing on A will ever run the health gate.
    A shorter ``OnBootSec`` is dropped in for the trial deadline timer. Power on: GRUB boots A
    on trial, the timer runs ``appliance slots deadline``, which marks A bad and reboots, and
    GRUB boots the committed B. (Data also gets the hang scenario's camera config, so the boot
    of B is the next test's.)"""
    device.require("c")
    device.vm.power_cut()
    out = device.edit_slot(
        "A",
        [
            f"rm {AGENT_UNIT}",
            f"symlink {AGENT_UNIT} /dev/null",
            f"mkdir {DEADLINE_DROPIN}",
            f"write {_dropin(device.work)} {DEADLINE_DROPIN}/e2e.conf",
            f"stat {AGENT_UNIT}",  # debugfs exits 0 whatever failed: read the result back
            f"cat {DEADLINE_DROPIN}/e2e.conf",
        ],
    )
    assert 'Fast link dest: "/dev/null"' in out and f"OnBootSec={DEADLINE_S}s" in out, out
    env = device.set_env({"ek_try": "A", "ek_tries_left": "1", "ek_bad": ""})
    assert env["ek_committed"] == "B" and env["ek_try"] == "A", env
    _arm_hung_primary(device)
    started = device.power_on()
    vm = device.vm
    # the kernel's own command line: GRUB chose A on trial (the deadline is armed)
    tried = vm.wait_for(r"Command line:.*edgekiln\.trial=1 edgekiln\.slot=A\b", BOOT_S)
    expired = vm.wait_for(
        r"slot A was not committed by its boot deadline", BOOT_S + DEADLINE_S, since=tried.end()
    )
    expired_at = time.time()
    assert "health gate:" not in vm.console()[tried.end() : expired.start()], "the agent ran on A"
    vm.wait_for(r"Command line:.*edgekiln\.trial=0 edgekiln\.slot=B\b", BOOT_S, since=expired.end())
    vm.wait_for(r"health gate: slot B committed", BOOT_S, since=expired.end())
    figures["f_power_on_to_deadline_s"] = round(expired_at - started, 1)
    figures["f_deadline_to_old_slot_s"] = round(time.time() - expired_at, 1)
    figures["f_power_on_to_old_slot_s"] = round(time.time() - started, 1)
    figures["f_deadline_on_boot_s"] = DEADLINE_S
    assert vm.resets >= 1, "the deadline's reboot was not a guest reset"
    env = device.env()
    assert env.get("ek_committed") == "B" and "A" in env.get("ek_bad", ""), env
    device.passed.append("f")


def _dropin(work: Path) -> Path:
    path = work / "deadline-dropin.conf"
    # OnBootSec= is a list: the empty assignment drops the image's 10 min first
    path.write_text(f"[Timer]\nOnBootSec=\nOnBootSec={DEADLINE_S}s\n")
    return path


def _stamp(record: dict[str, object]) -> float:
    """A record's host time: ``ts`` (results, pipeline events) or ``time`` (supervisor)."""
    return float(record.get("ts", record.get("time", 0)))  # type: ignore[arg-type]


def _of_kind(records: Records, kind: str) -> Records:
    return [r for r in records if r.get("type") == "event" and r.get("kind") == kind]


def test_e_hung_worker_is_killed_restarted_and_replaced_by_the_fallback(
    device: Device, figures: dict[str, object]
) -> None:
    """The worker hangs: its primary model's file is a pipe that never delivers (the process
    blocks in open(), still alive, no heartbeat). The agent's supervisor kills it when its
    heartbeat is stale, restarts it with a growing backoff, and after 3 hangs in a row switches
    to the fallback model, which runs. The events on data and the agent's journal (on the
    serial console) say why. Rides on the boot of B that f's deadline reboot started."""
    device.require("c")
    vm = device.vm
    if "f" in device.passed:  # the records since f's power-on
        since = 0
    else:  # f failed: a boot of its own
        vm.power_cut()
        _arm_hung_primary(device)
        device.power_on()
        since = vm.wait_for(r"health gate: slot B committed", BOOT_S).end()
    # the mode change is an alert: a warning in the agent's journal, forwarded to the console
    changed = vm.wait_for(r"mode_changed .*'previous': 'primary'", BOOT_S * 2, since=since)
    log = device.wait_results(
        lambda r: bool(_of_kind(device.since_power_on(r, EVENTS), "mode_changed")), BOOT_S, EVENTS
    )
    events = device.since_power_on(log, EVENTS)
    hung = [e for e in _of_kind(events, "worker_hung") if e.get("mode") == "primary"]
    assert len(hung) == 3, events
    # killed only once its heartbeat was stale (the agent's WatchdogSec 30 s -> 15 s); the
    # supervisor kills at silent > 15 s and records it rounded to the millisecond (15.0 seen)
    assert all(float(e["silent_s"]) >= 15.0 for e in hung), hung  # type: ignore[arg-type]
    assert all(e.get("signal") == "SIGKILL" for e in hung), hung
    # restarted with exponential backoff: 1 s, then 2 s
    assert [e.get("restart_in_s") for e in hung[:2]] == [1.0, 2.0], hung
    mode = _of_kind(events, "mode_changed")[0]
    assert mode.get("alert") is True and mode.get("previous") == "primary", mode
    assert "3 failures" in str(mode.get("reason")), mode
    # the fallback model runs (the hung primary never produced a result)
    records = device.wait_results(
        lambda r: any(x.get("model") == "inspect-fallback" for x in device.since_power_on(r)),
        BOOT_S,
    )
    fresh = [r for r in device.since_power_on(records) if r.get("degraded") is False]
    assert fresh and {r.get("model") for r in fresh} == {"inspect-fallback"}, fresh[:3]
    starts = _of_kind(events, "worker_started")
    figures["e_watchdog_journal_line"] = changed.group(0)[-160:]
    figures["e_watchdog_hangs_killed"] = len(hung)
    figures["e_watchdog_silent_s"] = [e.get("silent_s") for e in hung]
    figures["e_watchdog_restart_in_s"] = [e.get("restart_in_s") for e in hung]
    mode_at, first_start = _stamp(mode), _stamp(starts[0])
    figures["e_watchdog_first_start_to_mode_change_s"] = round(mode_at - first_start, 1)
    figures["e_watchdog_mode_change_to_fallback_result_s"] = round(_stamp(fresh[0]) - mode_at, 1)
    device.passed.append("e-watchdog")
