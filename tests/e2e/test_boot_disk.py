"""A second disk whose partitions are named ``rootfs_b`` and ``data`` is never the device's own.

An independent device (its own v1 disk, not the lifecycle's chained one) is powered on with a
second, writable drive: GPT partitions named ``rootfs_b`` (a byte pattern) and ``data`` (ext4
with a marker file), plus a FAT partition labelled ``EK-UPDATE`` holding v1's own bundle, so the
image's USB rule installs it at boot. The device must boot, mount its own data (the agent's
results land there), install into its own slot B, then boot that slot B on trial (GRUB names it
to the kernel by its partition UUID on the ESP's disk, not by name) and commit it, and leave
every byte of the second drive as it was through both boots. ``/dev/disk/by-partlabel/`` and
``root=PARTLABEL=`` would take whichever disk's partition of that name came first or last.

The same first boot is also the camera test: the device's camera is a real V4L2 capture device,
the guest kernel's ``vivid`` test driver (the e2e command line loads it, as the QEMU profile's
does), so the results the boot leaves on data are the primary model's answers to frames the
frozen runtime, which carries no OpenCV, read through linuxpy (format and frame-rate
negotiation, mmap streaming, DQBUF/QBUF) and converted from YUYV with numpy. The lifecycle
tests keep the npz pattern for their deterministic checks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from image.vm.qemu import Vm, VmConfig
from tests.e2e.device import (
    PIPELINE,
    RESULTS,
    STICK_LABEL,
    Build,
    esp_grubenv,
    ext4_file,
    parse_results,
    partitions,
    provision,
    read_partition,
    run,
    same_bytes,
)

Records = list[dict[str, object]]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    # builds with kiln into the one EDGEKILN_CACHE: one worker (tests/README.md)
    pytest.mark.xdist_group("e2e-kiln"),
]

BOOT_S = 900.0  # hang protection only (TCG on a loaded 2-core machine)
INSTALL_S = 1800.0
MIB = 1 << 20
MARKER = "/edgekiln/THIS-IS-THE-STICK"
#: the device's camera: the guest kernel's vivid driver, paced like the lifecycle's test pattern
#: (5 frames/s), so the install beside it gets the same share of the guest's CPU
CAMERA = {**PIPELINE, "source": "v4l2:///dev/video0?fps=5"}


@pytest.fixture(scope="module")
def v1(v1_build: Build) -> Build:
    """v1 of the QEMU test profile (the session's: only v1, no other build is started)."""
    return v1_build


def make_foreign_disk(bundle: Path, work: Path) -> Path:
    """GPT: ``rootfs_b`` (16 MiB pattern), ``data`` (ext4 with a marker), ``update`` (FAT
    labelled EK-UPDATE holding ``bundle``)."""
    update_mib = bundle.stat().st_size // MIB + 32
    disk = work / "foreign.img"
    disk.unlink(missing_ok=True)
    with disk.open("wb") as f:
        f.truncate((1 + 16 + 32 + update_mib + 1) * MIB)
    table = (
        "label: gpt\n"
        "start=1MiB, size=16MiB, name=rootfs_b\n"
        "size=32MiB, name=data\n"
        f"size={update_mib}MiB, name=update\n"
    )
    run(["sfdisk", "-q", str(disk)], input=table.encode())
    layout = partitions(disk)
    pattern = hashlib.sha256(b"a stick, not a slot").digest() * (16 * MIB // 32)
    tree = work / "foreign-data"
    (tree / "edgekiln").mkdir(parents=True, exist_ok=True)
    (tree / MARKER.lstrip("/")).write_text("a stick's data partition, never the device's\n")
    data = work / "foreign-data.ext4"
    data.unlink(missing_ok=True)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(data), "32M"])
    fat = work / "foreign-update.vfat"
    fat.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-n", STICK_LABEL, str(fat), str(update_mib * 1024)])
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run(["mcopy", "-i", str(fat), str(bundle), f"::/{bundle.name}"], env=env)
    with disk.open("r+b") as f:
        f.seek(layout["rootfs_b"][0])
        f.write(pattern)
        for name, part in (("data", data), ("update", fat)):
            f.seek(layout[name][0])
            with part.open("rb") as src:
                while block := src.read(MIB):
                    f.write(block)
    data.unlink()
    fat.unlink()
    return disk


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def vm(v1: Build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    work = tmp_path_factory.mktemp("bootdisk")
    disk = provision(v1.image, work / "v1.img", CAMERA)
    foreign = make_foreign_disk(v1.bundle, work)
    config = VmConfig(disk=disk, overlay=True, memory_mb=1024, cpus=2, writable_drives=[foreign])
    machine = Vm(config, workdir=work / "vm")
    try:
        yield machine
    finally:
        machine.power_cut()
        print(f"\nserial console of the boot-disk device: {machine.serial_log}")


@dataclass(frozen=True)
class FirstBoot:
    """What the first boot (A committed, v1 installed into B from the second drive, reboot)
    left: the results and the data partition's marker lookup, read after its clean reboot."""

    foreign_sha256: str
    records: Records
    marker_stat: str


@pytest.fixture(scope="module")
def first_boot(vm: Vm) -> FirstBoot:
    """Power on with the second drive in; wait for the commit of A, the USB install into B and
    the reboot it asks for; read the device's own data partition."""
    before = sha256_file(vm.config.writable_drives[0])
    layout = partitions(vm.config.disk)
    vm.start()
    vm.wait_for(r"health gate: slot A committed", BOOT_S)
    vm.wait_for(r"edgekiln-usb-update: installing \S+-1\.0\.0\.bundle", BOOT_S)
    vm.wait_for(r"edgekiln-usb-update: installed \S+ \(1\.0\.0\) into slot B", INSTALL_S)
    vm.wait_for(r"reboot: Restarting system", BOOT_S)
    vm.power_cut()  # after the guest's own clean reboot: everything it wrote is on the disk
    work = vm.config.disk.parent
    data = read_partition(vm.disk, layout["data"], work / "data.part")
    try:
        records = parse_results(ext4_file(data, RESULTS, work) or b"")
        marker = subprocess.run(["debugfs", "-R", f"stat {MARKER}", str(data)],
                                capture_output=True, text=True, check=False)  # fmt: skip
    finally:
        data.unlink()
    return FirstBoot(before, records, marker.stderr + marker.stdout)


def test_first_result_from_the_guest_kernels_vivid_camera(first_boot: FirstBoot) -> None:
    """The camera config names ``v4l2:///dev/video0`` as the only source: the primary model's
    results of the first boot are its answers to frames of the vivid camera."""
    results = [r for r in first_boot.records if r.get("type") == "result"]
    good = [r for r in results if r.get("degraded") is False]
    assert good, f"no result from /dev/video0: {first_boot.records[-5:]}"
    assert good[0].get("model") == "inspect-primary" and good[0].get("version") == "1.0.0", good[0]


def test_a_second_disk_named_like_the_devices_partitions_is_left_alone(
    vm: Vm, v1: Build, first_boot: FirstBoot
) -> None:
    foreign = vm.config.writable_drives[0]
    before = first_boot.foreign_sha256
    layout = partitions(vm.config.disk)
    # the agent wrote its results on the device's own data, not on the stick's
    good = [r for r in first_boot.records if r.get("degraded") is False]
    assert good, first_boot.records[-3:]
    assert "File not found" in first_boot.marker_stat  # not the stick's data
    work = vm.config.disk.parent
    built = partitions(v1.image)["rootfs_a"]
    assert same_bytes(vm.disk, layout["rootfs_b"], v1.image, built), "own slot B not written"
    esp = read_partition(vm.disk, layout["boot"], work / "esp.part")
    env = esp_grubenv(esp)
    esp.unlink()
    assert env.get("ek_try") == "B" and env.get("ek_committed") == "A", env
    assert sha256_file(foreign) == before, "the second disk was written"

    # Power on again with the second disk still in: the tried slot B is the device's own.
    uuid = partuuid(vm.config.disk, "rootfs_b")
    vm.start()
    vm.wait_for(rf"root=PARTUUID={uuid} .*edgekiln\.trial=1 edgekiln\.slot=B", BOOT_S)
    vm.wait_for(r"health gate: slot B passed", BOOT_S)  # the tried slot is committed
    assert "already installed from USB: skipped" in vm.wait_for(
        r"edgekiln-usb-update: .*already installed from USB: skipped", BOOT_S
    ).group(0)
    vm.power_cut()
    esp = read_partition(vm.disk, layout["boot"], work / "esp.part")
    env = esp_grubenv(esp)
    esp.unlink()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    assert sha256_file(foreign) == before, "the second disk was written"


def partuuid(disk: Path, name: str) -> str:
    """A GPT partition's UUID as the kernel writes it (lower case)."""
    import json

    doc = json.loads(run(["sfdisk", "-J", str(disk)]).stdout)
    return next(p["uuid"].lower() for p in doc["partitiontable"]["partitions"] if p["name"] == name)
