"""The jetson-orin runtime on an arm64 kernel: its self-test and a real V4L2 camera (vivid).

L4T does not boot in QEMU, and the TensorRT runtime cannot be frozen here (image/freeze/
targets.py), so this runs the Jetson test recipe's runtime (the jetson-orin target with ONNX
Runtime, tests/arm64_runtimes.py) where an arm64 kernel and a V4L2 device exist: in
``qemu-system-aarch64 -M virt`` (TCG), booted straight into the arm64 image's Debian base (the
coral-usb-arm64 recipe's, with its kernel and the ``vivid`` test driver) with the runtime on a
second, read-only drive. A probe script runs as init and powers the guest off:

- ``appliance info --json``: the runtime's libraries and camera stack as on a device;
- ``appliance selftest`` on the reference model package (budget scaled for TCG);
- ``appliance run --source v4l2:///dev/video0``: frames from vivid through linuxpy and libyuv
  into ONNX Runtime, as the agent's pipeline reads a USB camera on a Jetson.

The same tree goes into the Jetson slot images (tests/image/test_l4t.py). The probe boots no
systemd and no agent: the slot back end there is nvbootctrl, which needs the board.
In the ``arm64`` xdist group: the base is the one the arm64 lifecycle builds first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from image.build.identity import default_cache_dir
from image.build.rootfs import ensure_base, kernel_version
from image.recipe import load_recipe
from image.vm.qemu import DEFAULT_CPU
from tests.arm64_runtimes import jetson_standin
from tests.e2e.conftest import arm64_skip_reason
from tests.e2e.device import REPO

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None, reason="needs qemu-system-arm"),
    pytest.mark.skipif(arm64_skip_reason() is not None, reason=str(arm64_skip_reason())),
    pytest.mark.xdist_group("arm64"),
]

RECIPE = REPO / "recipes" / "coral-usb-arm64-qemu.toml"
MODEL = REPO / "recipes" / "models" / "inspect-primary"
FRAMES = 10
GUEST_S = 1500.0  # hang protection: one boot and three runtime commands under TCG, busy host

# Runs as init (pid 1) from the probe drive, mounted at /tmp/p; each step ends with a marker.
PROBE = f"""#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
modprobe vivid && echo "probe: vivid loaded"
for i in $(seq 60); do [ -e /dev/video0 ] && break; sleep 1; done
A=/tmp/p/appliance/appliance
echo "probe: info begin"; $A info --json; echo "probe: info rc=$?"
echo "probe: selftest begin"
$A selftest --model /tmp/p/model --backend onnxruntime --budget-factor 500 --json
echo "probe: selftest rc=$?"
$A run --source v4l2:///dev/video0 --model /tmp/p/model --backend onnxruntime \\
  --max-frames {FRAMES} --sink /tmp/results.jsonl
echo "probe: run rc=$?"
echo "probe: results begin"; cat /tmp/results.jsonl; echo "probe: results end"
echo o > /proc/sysrq-trigger; sleep 60
"""
INIT = "mount -t tmpfs t /tmp; mkdir /tmp/p; mount -o ro /dev/vdb /tmp/p && exec /tmp/p/probe.sh"


def _ext4(tree: Path, out: Path, extra_mib: int) -> Path:
    """A journal-less ext4 image holding ``tree`` (owners and modes kept: we run as root)."""
    used = int(subprocess.run(["du", "-sxm", str(tree)], capture_output=True, text=True,
                              check=True).stdout.split()[0])  # fmt: skip
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", str(tree), str(out),
         f"{used * 5 // 4 + extra_mib}M"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _between(log: str, begin: str, end: str) -> str:
    assert begin in log and end in log, f"no {begin!r} ... {end!r} on the console:\n{log[-3000:]}"
    return log.split(begin, 1)[1].split(end, 1)[0]


def test_jetson_runtime_selftest_and_vivid_camera_in_an_arm64_guest(
    tmp_path: Path, figures: dict[str, object]
) -> None:
    base = ensure_base(load_recipe(RECIPE), default_cache_dir())
    kernel = kernel_version(base.root)
    runtime = jetson_standin(tmp_path / "rt")
    stage = tmp_path / "probe"
    shutil.copytree(runtime.path, stage / "appliance", symlinks=True)
    (stage / "model").mkdir()
    for name in ("model.json", "model.onnx", "reference.npz"):
        shutil.copy2(MODEL / name, stage / "model" / name)
    (stage / "probe.sh").write_text(PROBE)
    (stage / "probe.sh").chmod(0o755)
    probe = _ext4(stage, tmp_path / "probe.img", 16)
    root = _ext4(base.root, tmp_path / "root.img", 64)
    serial = tmp_path / "serial.log"
    append = f'console=ttyAMA0 root=/dev/vda ro panic=-1 init=/bin/sh -- -c "{INIT}"'
    cmd = [
        "qemu-system-aarch64", "-accel", "tcg", "-machine", "virt",
        "-cpu", DEFAULT_CPU["arm64"], "-m", "1024", "-smp", "2",
        "-nographic", "-nodefaults", "-no-reboot", "-serial", f"file:{serial}",
        "-kernel", str(base.root / "boot" / f"vmlinuz-{kernel}"),
        "-initrd", str(base.root / "boot" / f"initrd.img-{kernel}"),
        "-append", append,
        "-drive", f"file={root},format=raw,if=virtio,readonly=on",
        "-drive", f"file={probe},format=raw,if=virtio,readonly=on",
    ]  # fmt: skip
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True, timeout=GUEST_S)
    figures["jetson_runtime_arm64_guest_s"] = round(time.monotonic() - started, 1)
    log = serial.read_text(errors="replace").replace("\r\n", "\n")
    print(f"\nserial console of the arm64 probe: {serial}")
    assert "probe: vivid loaded" in log, log[-3000:]

    info = json.loads(_between(log, "probe: info begin\n", "probe: info rc=0"))
    assert info["machine"] == "aarch64" and info["frozen"] is True, info
    assert [k for k, v in info["libraries"].items() if v] == ["onnxruntime"], info["libraries"]
    assert info["camera"]["v4l2"] == "linuxpy", info["camera"]

    text = _between(log, "probe: selftest begin\n", "probe: selftest rc=0")
    report = json.loads(text[text.index("{") :])  # after ONNX Runtime's telemetry warning
    assert report["passed"] is True and report["backend"] == "onnxruntime", report
    assert report["images"] == 256 and report["top1"] >= report["min_top1"], report

    assert "probe: run rc=0" in log, log[-3000:]
    lines = _between(log, "probe: results begin\n", "probe: results end").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    opened = [r for r in records if r.get("kind") == "source_opened"]
    assert opened and "/dev/video0" in str(opened[0]["reason"]), records[:3]
    assert "linuxpy" in str(opened[0]["reason"]), opened[0]
    results = [r for r in records if r.get("type") == "result"]
    assert len(results) == FRAMES, records
    assert all(r["degraded"] is False and r["model"] == "inspect-primary" for r in results)
    assert all(r["backend"] == "onnxruntime" and r["top"] for r in results), results[0]
    infer = sorted(float(r["ms"]["infer"]) for r in results)
    figures["jetson_runtime_arm64_vivid_infer_ms_p50"] = infer[FRAMES // 2]
