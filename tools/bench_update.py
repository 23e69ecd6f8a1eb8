#!/usr/bin/env python3
"""Bytes per idle poll and peak RSS of ``appliance update run``, against baselines in the run.

A real TUF channel (``kiln publish``) on a loopback server (tests/ota/channelserver.py), a
file-backed device (tools/powercut.py's slots and grubenv). ``appliance update run`` runs as a
child process each time (peak RSS from ``wait4``):

* **install**: v1 -> v2, a full bundle of a ``--mib`` MiB random image (incompressible: the
  bundle is as large as the image), downloaded, verified, written and read back;
* **idle**: the same device after the commit, nothing to do;
* baselines: ``appliance --version`` (the interpreter and the CLI alone) for RSS; a first poll
  with an empty TUF cache (root, timestamp, snapshot, targets) for bytes on the wire.

    .venv/bin/python tools/bench_update.py [--mib 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.bundle import PayloadSource, write_bundle
from tests.ota.channelserver import Server, serve
from tools.powercut import PRODUCT, TARGET, Device

MIB = 1 << 20


# A vfork()ed child shares the parent's memory map until exec, and Linux carries that map's
# high-water RSS into the child's ru_maxrss: measured straight from this (large) process, every
# child would report at least this process's peak. A small relay process starts the command
# and reports the child's own peak.
RELAY = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "os.write(int(sys.argv[1]), str(usage.ru_maxrss).encode())\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def child(argv: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    """(exit code, peak RSS MiB of the command alone, stdout)."""
    read, write = os.pipe()
    os.set_inheritable(write, True)
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAY, str(write), *argv], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, pass_fds=(write,),
    )  # fmt: skip
    os.close(write)
    out, err = proc.communicate()
    peak = os.read(read, 64)
    os.close(read)
    if proc.returncode != 0:
        sys.stderr.write(err.decode())
    return proc.returncode, int(peak or b"0") / 1024, out.decode().strip()


def one(work: Path, mib: int) -> dict[str, float]:
    os.environ["EDGEKILN_TUF_KEYS"] = str(work / "keys")
    from image.release.publish import publish

    dev = Device(work / "dev")
    dev.reset()
    repo = work / "www" / "repo"
    v1 = work / "v1.bundle"
    v1.write_bytes(dev.bundle_v1)
    publish(v1, repo, create_keys=True)
    image = os.urandom(mib * MIB)
    v2 = work / "v2.bundle"
    with open(v2, "wb") as f:
        write_bundle(
            f, key=dev.key, product=PRODUCT, targets=[TARGET], version="2.0.0",
            security_version=1, created=1_750_000_000,
            payloads=[PayloadSource("rootfs.img", "full", image, "none")], chunk_size=1 * MIB,
        )  # fmt: skip
    del image
    publish(v2, repo, create_keys=True)
    ring = work / "keyring.json"
    ring.write_bytes(dev.keyring.to_bytes())
    root = repo / "metadata" / "1.root.json"
    rows: dict[str, float] = {"bundle": v2.stat().st_size}
    with serve(work / "www") as www:
        update = {"channels": [f"{www.url}/repo"], "tuf_root": str(root), "reboot": "manual"}
        (work / "update.json").write_text(json.dumps(update))

        def run(version: str, booted: str) -> tuple[int, float, str, Server]:
            (work / "device.json").write_text(
                json.dumps({"product": PRODUCT, "target": TARGET, "version": version})
            )
            env = {**os.environ, "EDGEKILN_DEVICE_CONFIG": str(work / "device.json"),
                   "EDGEKILN_UPDATE_CONFIG": str(work / "update.json"),
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
            www.clear()
            code, rss, out = child(
                [sys.executable, "-m", "appliance.cli", "update", "run", "--data-dir",
                 str(dev.root / "data"), "--loader", f"grub:{dev.root / 'esp'}", "--booted",
                 booted, "--keyring", str(ring), "--slot", f"A={dev.slots['A']}",
                 "--slot", f"B={dev.slots['B']}", "--now"], env,
            )  # fmt: skip
            return code, rss, out, www

        base_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        _, rows["rss_baseline"], _ = child(
            [sys.executable, "-m", "appliance.cli", "--version"], base_env
        )
        code, rows["rss_install"], out, server = run("1.0.0", "A")
        assert out == "update.reboot-pending", (code, out)
        rows["bytes_install"] = server.body_bytes()
        dev.loader().commit("B") if dev.boot()[0] == "B" else None
        code, rows["rss_idle"], out, server = run("2.0.0", "B")
        assert out == "update.up-to-date", (code, out)
        rows["bytes_idle"] = server.body_bytes()
        rows["requests_idle"] = len(server.hits)
        shutil.rmtree(dev.root / "data" / "tuf")  # a device with an empty TUF cache
        code, _, out, server = run("2.0.0", "B")
        rows["bytes_first"] = server.body_bytes()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one(Path(tmp), args.mib))
    best = {k: max(r[k] for r in runs) for k in runs[0]}
    print(f"| case | bytes on the wire | x first poll | peak RSS MiB (max of {args.repeat}) "
          "| x baseline | goal |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| `appliance --version` (RSS baseline) | - | - | {best['rss_baseline']:.1f} | 1.00 | - |"
    )
    print(f"| first poll, empty TUF cache (bytes baseline) | {best['bytes_first']:.0f} | 1.00 "
          "| - | - | - |")  # fmt: skip
    print(f"| idle poll ({best['requests_idle']:.0f} requests) | {best['bytes_idle']:.0f} | "
          f"{best['bytes_idle'] / best['bytes_first']:.2f} | {best['rss_idle']:.1f} | "
          f"{best['rss_idle'] / best['rss_baseline']:.2f} | <= 2048 B, <= 64 MiB |")  # fmt: skip
    print(f"| install v1 -> v2, full {args.mib} MiB (bundle {best['bundle']:.0f} B) | "
          f"{best['bytes_install']:.0f} | - | {best['rss_install']:.1f} | "
          f"{best['rss_install'] / best['rss_baseline']:.2f} | <= 64 MiB |")  # fmt: skip


if __name__ == "__main__":
    main()
