"""The intel-openvino image boots in QEMU and infers on frames of a real V4L2 camera.

``recipes/intel-openvino-qemu.toml`` (the intel-openvino target as the QEMU tests boot it: the
generic image's Debian base, so the cached root is shared with the x86 profile; the reference
packages unoptimised; vivid loaded by the kernel command line; the pipeline's camera
``v4l2:///dev/video0?fps=5``) is built with the real ``kiln build`` and booted once, under TCG
with ``-cpu max``, on a qcow2 overlay of the built image: nothing is provisioned, the camera is
the recipe's own. The device must pass its health gate on OpenVINO and then publish results
of the primary model, inferred by OpenVINO's CPU plug-in inside the frozen intel-openvino
runtime (no OpenCV), on frames that runtime read from vivid through linuxpy and converted
from YUYV with the bundled libyuv; the ``source_opened`` event says which.

Cost in CI (cold kiln cache): the Debian base is the x86 profile's (built once per run by
whichever build comes first), the frozen runtime is tests/image/test_freeze.py's kiln-cache
entry (frozen once per run), so this file adds the slot and the raw image (``kiln build --skip
compress,bundle``: it never flashes nor installs them; ~1 min) and one boot to the first result
(~2-3 min under TCG). Figures: tests/e2e/README.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from image.vm.qemu import Vm, VmConfig
from tests.e2e.device import (
    REPO,
    RESULTS,
    Build,
    build,
    ext4_file,
    parse_results,
    partitions,
    read_partition,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

PROFILE = REPO / "recipes" / "intel-openvino-qemu.toml"
BOOT_S = 900.0  # hang protection only (TCG on a loaded 2-core machine)
RESULT_POLL_S = 5.0

Records = list[dict[str, object]]


@pytest.fixture(scope="module")
def openvino_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The intel-openvino QEMU profile as recipes/ has it, built with the real ``kiln``."""
    out = tmp_path_factory.mktemp("openvino-build")
    # the VM boots the raw image: no compressed copy (for flashing), no bundle (for updates)
    return build(PROFILE, out, "0.1.0", skip=("compress", "bundle"))


@pytest.fixture(scope="module")
def vm(openvino_build: Build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    work = tmp_path_factory.mktemp("openvino-device")
    config = VmConfig(disk=openvino_build.image, overlay=True, memory_mb=1024, cpus=2)
    machine = Vm(config, workdir=work)
    try:
        yield machine
    finally:
        machine.power_cut()
        print(f"\nserial console of the intel-openvino device: {machine.serial_log}")


def results(vm: Vm, layout: dict[str, tuple[int, int]], work: Path) -> Records:
    """The results file on the running device's data partition (empty if read mid-write)."""
    data = read_partition(vm.disk, layout["data"], work / "data.part")
    try:
        return parse_results(ext4_file(data, RESULTS, work) or b"")
    except AssertionError:  # e2fsck could not repair a copy taken mid-write: read again
        return []
    finally:
        data.unlink()


def test_first_result_is_openvinos_answer_to_a_vivid_frame(
    vm: Vm, openvino_build: Build, figures: dict[str, object], tmp_path: Path
) -> None:
    layout = partitions(openvino_build.image)
    started = time.time()
    vm.start()
    vm.wait_for(r"health gate: slot A committed", BOOT_S)
    gate_s = time.time() - started
    deadline = time.monotonic() + BOOT_S
    records: Records = []
    while not any(r.get("degraded") is False for r in records):
        assert time.monotonic() < deadline, f"no result within {BOOT_S:.0f} s: {records[-5:]}"
        time.sleep(RESULT_POLL_S)
        records = results(vm, layout, tmp_path)
    first = next(i for i, r in enumerate(records) if r.get("degraded") is False)
    result = records[first]
    # the primary model, run by OpenVINO (the runtime carries no other back end)
    assert result.get("model") == "inspect-primary", result
    assert result.get("backend") == "openvino", result
    assert str(result.get("file", "")).endswith(".onnx"), result
    assert isinstance(result.get("top"), list) and result["top"], result
    # ... on a frame of vivid's: the source the pipeline opened before that result
    opened = [
        r for r in records[:first] if r.get("type") == "event" and r.get("kind") == "source_opened"
    ]
    assert opened, records[: first + 1]
    reason = str(opened[-1]["reason"])
    assert reason.startswith("v4l2:///dev/video0?fps=5: /dev/video0 "), reason
    # vivid offers no MJPEG; the rate is the one the URI asked for
    assert "YUYV at 5 frames/s (linuxpy, libyuv)" in reason, reason
    lost = [r for r in records[:first] if r.get("kind") == "source_lost"]
    assert not lost, lost  # the camera opened at the first try
    figures["openvino_build_s"] = round(openvino_build.seconds, 1)
    figures["openvino_boot_to_gate_s"] = round(gate_s, 1)
    figures["openvino_boot_to_first_result_s"] = round(float(result["ts"]) - started, 1)  # type: ignore[arg-type]
    figures["openvino_first_result"] = {k: result.get(k) for k in ("model", "backend", "file")}
