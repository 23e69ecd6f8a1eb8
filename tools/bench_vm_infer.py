#!/usr/bin/env python3
"""Where a frame's time goes under QEMU TCG: the same model on the host, under qemu-user, in
an idle guest, and in the running device.

    tools/bench_vm_infer.py out-qemu/<image>.img --cpu max --cpu Nehalem --frames 40

Rows, each measured in this run:

* ``host``: onnxruntime on the build host's CPU (1 intra-op thread, as the device).
* ``qemu-user -cpu X``: the same Python and onnxruntime under ``qemu-x86_64-static`` with the
  CPU model X: TCG's cost alone (no guest kernel, no other guest processes).
* ``guest selftest``: ``appliance selftest`` in a booted image whose agent is masked (the kernel
  command line runs it through ``systemd.run``): the guest system's cost, idle.
* ``guest device``: the running device (agent, pipeline at the profile's 5 frames/s, the TUI on
  tty1): the agent's own per-frame stage timings from ``results.jsonl`` on the data partition.

The host's load average is printed with each row: on two shared cores every emulated figure is
wall time that grows with it (at load 10 a runnable process gets ~1/5 of a core), so the
qemu-user rows also give the CPU time per inference, which does not. Needs qemu-system-x86_64,
qemu-user-static, OVMF, mtools, e2fsprogs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from image.vm.qemu import Vm, VmConfig  # noqa: E402

MODEL = REPO / "recipes" / "models" / "inspect-primary" / "model.onnx"
TIMING = """
import sys, time, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape])
x = x.astype(np.float32)
s.run(None, {i.name: x})
ts, cpu = [], []
for _ in range(int(sys.argv[2])):
    t, c = time.perf_counter(), time.process_time()
    s.run(None, {i.name: x})
    ts.append((time.perf_counter() - t) * 1e3); cpu.append((time.process_time() - c) * 1e3)
print(np.median(ts), np.percentile(ts, 95), np.median(cpu))
"""


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def row(what: str, median: float, p95: float, extra: str = "") -> None:
    click.echo(f"| {what} | {median:.2f} | {p95:.2f} | {1000 / median:.1f} | {extra} | {load()} |")


def user_mode(cpus: list[str], runs: int) -> None:
    """onnxruntime natively and under qemu-user with each CPU model."""
    python = Path(sys.executable).resolve()
    site = subprocess.run(
        [sys.executable, "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {**os.environ, "PYTHONPATH": site}
    native = subprocess.run(
        [sys.executable, "-c", TIMING, str(MODEL), str(runs * 10)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    row("host", float(native[0]), float(native[1]), f"CPU time {float(native[2]):.2f} ms")
    for cpu in cpus:
        out = subprocess.run(
            ["qemu-x86_64-static", "-cpu", cpu, str(python), "-c", TIMING, str(MODEL), str(runs)],
            capture_output=True, text=True, check=True, env=env,
        ).stdout.split()  # fmt: skip
        row(
            f"qemu-user -cpu {cpu}",
            float(out[0]),
            float(out[1]),
            f"CPU time {float(out[2]):.2f} ms",
        )


def _partitions(disk: Path) -> dict[str, tuple[int, int]]:
    table = json.loads(
        subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=True).stdout
    )["partitiontable"]
    return {p["name"]: (int(p["start"]) * 512, int(p["size"]) * 512) for p in table["partitions"]}


def _read_partition(disk: Path, where: tuple[int, int], out: Path) -> Path:
    node = f"driver=raw,offset={where[0]},size={where[1]},file.driver=qcow2,"
    node += f"file.file.driver=file,file.file.filename={disk}"
    out.unlink(missing_ok=True)
    subprocess.run(
        ["qemu-img", "convert", "-U", "--image-opts", node, "-O", "raw", str(out)],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def _results(vm: Vm, data: tuple[int, int], work: Path) -> list[dict[str, object]]:
    part = _read_partition(vm.disk, data, work / "data.part")
    subprocess.run(["e2fsck", "-fy", str(part)], capture_output=True, check=False)
    dump = work / "results.jsonl"
    dump.unlink(missing_ok=True)
    cmd = ["debugfs", "-R", f"dump /edgekiln/results.jsonl {dump}", str(part)]
    subprocess.run(cmd, capture_output=True, check=False)
    records = []
    for line in dump.read_text().splitlines() if dump.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if r.get("type") == "result" and r.get("degraded") is False]


def guest_device(image: Path, cpu: str, frames: int) -> None:
    """Boot the image; the agent's per-frame stage timings once ``frames`` results are in."""
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
        work = Path(tmp)
        with Vm(VmConfig(disk=image, overlay=True, cpu=cpu), workdir=work / "vm") as vm:
            vm.start()
            vm.wait_for(r"health gate: slot [AB]", 900)
            data = _partitions(image)["data"]
            deadline = time.monotonic() + 1800
            records: list[dict[str, object]] = []
            while len(records) < frames + 5 and time.monotonic() < deadline:
                time.sleep(10)
                records = _results(vm, data, work)
        ok = records[5:]  # the first frames warm up
        if not ok:
            raise click.ClickException("no results from the guest within 30 min")
        infer = [float(r["ms"]["infer"]) for r in ok]  # type: ignore[index]
        stamps = [float(r["ts"]) for r in ok]  # type: ignore[arg-type]
        fps = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
        over = sum(1 for r in ok if r.get("over_budget"))
        p95 = statistics.quantiles(infer, n=20)[-1]
        extra = f"{fps:.2f} fps delivered, {over}/{len(ok)} frames over budget"
        row(f"guest device -cpu {cpu}", statistics.median(infer), p95, extra)


def guest_selftest(image: Path, cpu: str) -> None:
    """``appliance selftest`` in a guest whose agent is masked (idle system)."""
    with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
        work = Path(tmp)
        disk = work / "disk.img"
        subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
        offset = _partitions(disk)["boot"][0]
        esp = f"{disk}@@{offset}"
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        cfg = work / "grub.cfg"
        subprocess.run(
            ["mcopy", "-n", "-i", esp, "::/grub/grub.cfg", str(cfg)], env=env, check=True
        )
        run = '"systemd.run=/opt/edgekiln/appliance/appliance selftest --limit 64"'
        text = cfg.read_text().replace(
            "edgekiln.slot=$1", f"edgekiln.slot=$1 systemd.mask=edgekiln-agent.service {run}", 1
        )
        cfg.write_text(text)
        subprocess.run(
            ["mcopy", "-o", "-i", esp, str(cfg), "::/grub/grub.cfg"], env=env, check=True
        )
        with Vm(VmConfig(disk=disk, overlay=True, cpu=cpu), workdir=work / "vm") as vm:
            vm.start()
            found = vm.wait_for(r"infer\s+p50\s+([\d.]+) ms\s+p95\s+([\d.]+) ms", 1200)
        row(f"guest selftest -cpu {cpu}", float(found[1]), float(found[2]), "64 images, agent off")


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cpu", "cpus", multiple=True, help="QEMU CPU models (default: max).")
@click.option("--frames", default=40, show_default=True, help="Device frames to time.")
@click.option("--runs", default=20, show_default=True, help="Inferences under qemu-user.")
@click.option("--no-guest", is_flag=True, help="Only the host and qemu-user rows.")
def main(image: Path, cpus: tuple[str, ...], frames: int, runs: int, no_guest: bool) -> None:
    """Per-frame inference time of the reference model: host, qemu-user, guest, device."""
    if shutil.which("qemu-x86_64-static") is None:
        raise click.ClickException("qemu-x86_64-static not found: apt-get install qemu-user-static")
    models = list(cpus) or ["max"]
    click.echo("| where | infer median ms | infer p95 ms | fps (1/median) | note | load |")
    click.echo("| --- | --- | --- | --- | --- | --- |")
    user_mode(models, runs)
    if no_guest:
        return
    for cpu in models:
        guest_selftest(image, cpu)
        guest_device(image, cpu, frames)
    click.echo(re.sub(r"\s+", " ", f"(image {image.name})"))


if __name__ == "__main__":
    main()
