"""First result from a real V4L2 camera: the guest kernel's ``vivid`` test driver in QEMU.

The QEMU test profile loads ``vivid`` (``modules-load=vivid`` on its kernel command line), so
the guest has a real V4L2 capture device at ``/dev/video0`` driven by a real kernel driver. This
test builds the profile (its own recipe, inheriting the profile's command line), points the
pipeline at ``v4l2:///dev/video0`` and waits for a result the primary model produced from a
camera frame: the frozen runtime, which carries no OpenCV, read it through linuxpy (buffer
negotiation, mmap streaming, DQBUF/QBUF) and the numpy YUYV conversion. The lifecycle tests
keep the npz pattern for their deterministic checks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from image.vm.qemu import Vm, VmConfig
from tests.e2e.device import (
    BASE_RECIPE,
    PIPELINE,
    RESULTS,
    build,
    ext4_file,
    make_models,
    parse_results,
    partitions,
    provision,
    read_partition,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    # builds with kiln into the one EDGEKILN_CACHE: one worker (tests/README.md)
    pytest.mark.xdist_group("e2e-kiln"),
]

BOOT_S = 900.0  # hang protection only (TCG on a loaded 2-core machine)


def _recipe(workdir: Path) -> Path:
    primary, fallback = make_models(workdir / "reference-models", "1.0.0")
    recipe = workdir / "vivid.toml"
    recipe.write_text(
        f'extends = "{os.path.relpath(BASE_RECIPE, workdir)}"\n'
        'version = "1.0.0"\n'
        "[models]\n"
        f'primary = "{primary.relative_to(workdir)}"\n'
        f'fallback = "{fallback.relative_to(workdir)}"\n'
    )
    return recipe


def test_first_result_from_the_guest_kernels_vivid_camera(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("vivid")
    built = build(_recipe(work / "recipe"), work / "out", "1.0.0")
    camera = {**PIPELINE, "source": "v4l2:///dev/video0"}
    disk = provision(built.image, work / "device.img", camera)
    layout = partitions(disk)
    vm = Vm(
        VmConfig(disk=disk, overlay=True, cache="writeback", memory_mb=1024, cpus=2),
        workdir=work / "vm",
    )
    records: list[dict[str, object]] = []
    try:
        vm.start()
        vm.wait_for(r"health gate: slot A committed", BOOT_S)
        deadline = time.monotonic() + BOOT_S
        while time.monotonic() < deadline:
            data = read_partition(vm.disk, layout["data"], work / "data.part")
            try:
                records = parse_results(ext4_file(data, RESULTS, work) or b"")
            except AssertionError:  # read mid-write: read again
                records = []
            finally:
                data.unlink()
            if any(r.get("type") == "result" and r.get("degraded") is False for r in records):
                break
            time.sleep(3.0)
    finally:
        vm.power_cut()
        print(f"\nserial console of the vivid device: {vm.serial_log}")
    results = [r for r in records if r.get("type") == "result" and r.get("degraded") is False]
    assert results, f"no result from /dev/video0: {records[-5:]}"
    assert results[0].get("model") == "inspect-primary" and results[0].get("version") == "1.0.0"
