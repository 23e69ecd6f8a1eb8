"""The arm64 image's life in QEMU: U-Boot A/B from first boot to a rolled-back bad update.

``coral-usb-arm64`` as its QEMU profile builds it (``recipes/coral-usb-arm64-qemu.toml``),
booted by ``qemu-system-aarch64 -M virt`` with Debian's u-boot-qemu under TCG; U-Boot's distro
boot runs the image's boot.scr, which keeps the A/B variables in the two env files on the boot
partition (docs/decisions.md §32). One VM (a qcow2 overlay on v1) goes through, in order:

a. power on v1: slot A committed, the first results from a real V4L2 camera: the guest kernel's
   ``vivid`` test driver (the profile loads it), ``v4l2:///dev/video0`` in the pipeline config
   on data (as a technician's camera setup writes it; the x86 version is test_vivid_camera.py);
b. a USB stick holding v2 plugged into the running device: installed into B, U-Boot counts the
   try down in the other env file and boots B on trial, its gate passes, B committed;
c. a stick holding v3 (its primary model disagrees with its reference labels): installed into
   A, tried, fails its health gate; the next boot is B again, v2's results.

The health gate checks each model on its reference split (the npz pattern), so its verdicts stay
deterministic while the camera is vivid's.

v2 and v3 are built in the background while v1 boots. Timeouts are hang protection only.

Runs by default (``EDGEKILN_E2E_ARM64=0`` skips it; the default is ``ARM64_BY_DEFAULT`` in
tests/e2e/conftest.py). With a cold kiln cache the first build also makes the arm64 base
(mmdebstrap under qemu-user) and the arm64 frozen runtime (PyInstaller under qemu-user): the
file is in the ``arm64`` xdist group with tests/image/test_freeze_arm64.py and
test_devboard_arm64.py, so one worker builds them once and this chain, the suite's longest,
starts first (tests/scheduling.py; figures per stage: tests/e2e/README.md). With both cached
the file's cost is three slot builds and the boots and installs under TCG.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.slots import ubootenv
from appliance.slots.uboot import EnvFiles
from image.vm.qemu import UBOOT_QEMU_ARM64, Vm, VmConfig
from tests.e2e.conftest import Builds, _cache_root, arm64_skip_reason
from tests.e2e.device import (
    REPO,
    RESULTS,
    SKIP,
    Build,
    build,
    ext4_file,
    make_stick,
    parse_results,
    partitions,
    provision,
    read_partition,
    write_recipe,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(5400),
    pytest.mark.skipif(
        not (UBOOT_QEMU_ARM64.exists() and shutil.which("qemu-system-aarch64")),
        reason="needs u-boot-qemu and qemu-system-arm",
    ),
    pytest.mark.skipif(arm64_skip_reason() is not None, reason=str(arm64_skip_reason())),
    # with the arm64 runtime's freeze and the devboard build: the base is built once, and the
    # longest chain starts first on its worker (tests/scheduling.py)
    pytest.mark.xdist_group("arm64"),
]

PROFILE = REPO / "recipes" / "coral-usb-arm64-qemu.toml"
CMDLINE = (
    "console=ttyAMA0,115200 rootwait systemd.journald.forward_to_console=1 modules-load=vivid "
    "systemd.default_timeout_start_sec=600"  # hang protection (recipes/coral-usb-arm64-qemu.toml)
)
CAMERA = "v4l2:///dev/video0"
PIPELINE_JSON = "/edgekiln/pipeline.json"  # on data: the agent's pipeline config
VERSIONS = {"1.0.0": False, "2.0.0": False, "3.0.0": True}  # version -> broken primary model
FIRST = "1.0.0"  # the device's first version (booted, never installed from a stick)
BOOT_S = 1200.0  # one arm64 boot under TCG on a busy machine
INSTALL_S = 2400.0
RESULT_POLL_S = 5.0

Records = list[dict[str, object]]


def _one_build(recipes: Path, workdir: Path, version: str) -> Build:
    recipe = write_recipe(
        recipes / version,
        version,
        broken_model=VERSIONS[version],
        base_recipe=PROFILE,
        cmdline=CMDLINE,
    )
    # no compressed image (the VM boots the raw one); v1's bundle is never installed
    skip = (*SKIP, "bundle") if version == FIRST else SKIP
    return build(recipe, workdir / version, version, skip)


@pytest.fixture(scope="module")
def arm64_builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    """v1 (built first), v2 and v3 of the arm64 QEMU profile, by the real ``kiln build``."""
    recipes = _cache_root() / "e2e-recipes-arm64"
    workdir = tmp_path_factory.mktemp("arm64-builds")
    first, *later = VERSIONS
    done: Future[Build] = Future()
    done.set_result(_one_build(recipes, workdir, first))
    futures = {first: done}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-arm64-build") as pool:
        for version in later:
            futures[version] = pool.submit(_one_build, recipes, workdir, version)
        try:
            yield Builds(futures)
        finally:
            for future in futures.values():
                future.cancel()


@dataclass
class Device:
    vm: Vm
    work: Path
    builds: Builds
    layout: dict[str, tuple[int, int]]
    passed: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The A/B variables as U-Boot would read them now (the current of the two files)."""
        esp = read_partition(self.vm.disk, self.layout["boot"], self.work / "boot.part")
        raws = []
        try:
            for name in EnvFiles().names:
                local = self.work / name
                local.unlink(missing_ok=True)
                subprocess.run(
                    ["mcopy", "-i", str(esp), f"::/{name}", str(local)],
                    check=True,
                    capture_output=True,
                    env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
                )
                raws.append(local.read_bytes())
        finally:
            esp.unlink()
        chosen = ubootenv.choose(raws)
        assert chosen is not None, "neither env file has a valid CRC"
        return chosen

    def results(self) -> Records:
        data = read_partition(self.vm.disk, self.layout["data"], self.work / "data.part")
        try:
            return parse_results(ext4_file(data, RESULTS, self.work) or b"")
        finally:
            data.unlink()

    def wait_results(self, ready: object, timeout: float) -> Records:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while True:
            try:
                records = self.results()
            except AssertionError:  # read mid-write: read again
                records = []
            if ready(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"results not ready within {timeout:.0f} s: {records[-3:]}")
            time.sleep(RESULT_POLL_S)

    def require(self, *scenarios: str) -> None:
        missing = [s for s in scenarios if s not in self.passed]
        if missing:
            pytest.fail(f"needs scenario(s) {', '.join(missing)} to have passed first")


def good_versions(records: Records, since: float = 0.0) -> list[object]:
    """Model versions of the primary model's results (not degraded) stamped after ``since``."""
    return [
        r.get("version")
        for r in records
        if r.get("degraded") is False and float(r.get("ts", 0)) > since  # type: ignore[arg-type]
    ]


@pytest.fixture(scope="module")
def device(arm64_builds: Builds, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    work = tmp_path_factory.mktemp("arm64-device")
    image = arm64_builds["1.0.0"].image
    layout = partitions(image)
    data = read_partition(image, layout["data"], work / "data.part")
    try:
        pipeline = json.loads(ext4_file(data, PIPELINE_JSON, work) or b"{}")
    finally:
        data.unlink()
    assert str(pipeline.get("source", "")).startswith("npz:"), pipeline  # the recipe's default
    disk = provision(image, work / "device.img", {**pipeline, "source": CAMERA})
    config = VmConfig(
        disk=disk,
        arch="arm64",
        overlay=True,
        cache="writeback",
        memory_mb=1024,
        cpus=2,
        usb=True,
        relaunch_on_reset=True,
    )
    vm = Vm(config, workdir=work / "vm")
    try:
        yield Device(vm, work, arm64_builds, layout)
    finally:
        vm.power_cut()
        print(f"\nserial console of the arm64 e2e device: {vm.serial_log}")


def test_a_first_boot_commits_and_infers(device: Device, figures: dict[str, object]) -> None:
    vm = device.vm
    started = time.time()
    vm.start()
    vm.wait_for(r"edgekiln: booting slot A from virtio 0:2 \(trial 0\)", BOOT_S)
    vm.wait_for(r"health gate: slot A committed", BOOT_S)
    gate_s = time.time() - started
    records = device.wait_results(lambda r: bool(good_versions(r)), BOOT_S)
    good = [r for r in records if r.get("degraded") is False]
    assert good[0].get("model") == "inspect-primary" and good[0].get("version") == "1.0.0", good[0]
    env = device.env()
    assert env.get("ek_committed") == "A" and not env.get("ek_try"), env
    figures["arm64_a_boot_to_gate_s"] = round(gate_s, 1)
    figures["arm64_a_boot_to_first_result_s"] = round(float(good[0]["ts"]) - started, 1)  # type: ignore[arg-type]
    device.passed.append("a")


def test_b_update_from_usb_tries_commits_and_runs_v2(
    device: Device, figures: dict[str, object]
) -> None:
    device.require("a")
    vm = device.vm
    v2 = device.builds["2.0.0"]
    stick = make_stick(v2.bundle, device.work / "stick-v2.img")
    plugged = time.time()
    vm.plug_usb(stick)
    vm.wait_for(r"edgekiln-usb-update: installing \S+-2\.0\.0\.bundle", BOOT_S)
    installing = time.time()
    vm.wait_for(r"installed 2\.0\.0 into slot B", INSTALL_S)
    figures["arm64_b_install_s"] = round(time.time() - installing, 1)
    # U-Boot counted the try down (fatwrite of the other env file) before booting B
    vm.wait_for(r"edgekiln: booting slot B from virtio 0:3 \(trial 1\)", BOOT_S)
    vm.wait_for(r"health gate: slot B passed", BOOT_S * 2)
    figures["arm64_b_plug_to_v2_committed_s"] = round(time.time() - plugged, 1)
    device.wait_results(lambda r: good_versions(r)[-1:] == ["2.0.0"], BOOT_S)
    env = device.env()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    device.passed.append("b")


def test_c_broken_v3_rolls_back_to_v2(device: Device, figures: dict[str, object]) -> None:
    device.require("b")
    vm = device.vm
    v3 = device.builds["3.0.0"]
    vm.plug_usb(make_stick(v3.bundle, device.work / "stick-v3.img"))
    vm.wait_for(r"installed 3\.0\.0 into slot A", INSTALL_S)
    failed = vm.wait_for(r"slot A failed its health check", BOOT_S * 2)
    failed_at = time.time()
    vm.wait_for(r"health gate: slot B committed", BOOT_S * 2, since=failed.end())
    figures["arm64_c_failed_check_to_old_slot_s"] = round(time.time() - failed_at, 1)
    device.wait_results(lambda r: good_versions(r, failed_at) != [], BOOT_S)
    assert set(good_versions(device.results(), failed_at)) == {"2.0.0"}
    env = device.env()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    assert "A" in env.get("ek_bad", ""), env
    device.passed.append("c")
