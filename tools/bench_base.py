"""Where a Debian base's bootstrap spends its time: wall and CPU seconds per phase and package.

    .venv/bin/python tools/bench_base.py [recipes/coral-usb-arm64.toml] [--out DIR] [--keep]
                                         [--top 25]

Runs the recipe's ``mmdebstrap`` command exactly as ``kiln build``'s base stage does (the same
argv from :func:`image.build.rootfs.bootstrap_command` and environment; no cache), with
``--verbose`` so dpkg names each step. A sampler reads the CPU time of mmdebstrap's whole
process tree (every live process's own and reaped children's user + system time) five times a
second and charges it to the step on screen then ("Unpacking X", "Setting up X", "Processing
triggers for X", mmdebstrap's phases, the hooks). It also samples the tree's run-queue wait
(``/proc/PID/schedstat``: time a runnable process waited for a CPU; live processes only, so a
lower bound) and the host's load average, so a wall time can be read as work or as waiting.

Prints the total (wall, CPU, run-queue wait, load), then the steps with the most CPU, then
the steps with the most wall time. Root only (mmdebstrap ``--mode=root``; binfmt_misc).
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from image.build.binfmt import ensure_binfmt  # noqa: E402
from image.build.foreign_base import arch_env  # noqa: E402
from image.build.rootfs import base_key, bootstrap_command  # noqa: E402
from image.recipe.load import load_recipe  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SCRIPT = re.compile(r"/var/lib/dpkg/info/([^ /]+?)\.(preinst|postinst|prerm|postrm) (\S+)")
DEB = re.compile(r"/(?:\d+-)?([a-z0-9][a-z0-9+.-]*)_[^ /]*\.deb")  # apt: NN-name_ver_arch.deb


@dataclass
class Step:
    wall: float = 0.0
    cpu: float = 0.0
    wait: float = 0.0


@dataclass
class Sampler:
    root_pid: int
    steps: dict[str, Step] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    _seen_wait: dict[int, int] = field(default_factory=dict)

    def tree(self) -> tuple[float, int, str]:
        """CPU seconds of the tree (live + reaped), new run-queue wait (ns), what runs now."""
        parents: dict[int, int] = {}
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2 :].split()
            pid = int(entry)
            parents[pid] = int(fields[1])
            stats[pid] = fields
        members = {self.root_pid}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in members and pid not in members:
                    members.add(pid)
                    changed = True
        ticks = 0
        wait = 0
        cmdlines = []
        for pid in members:
            fields = stats.get(pid)
            if fields is None:
                continue
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
            try:
                ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, IndexError, ValueError):
                continue
            wait += max(0, ns - self._seen_wait.get(pid, 0))
            self._seen_wait[pid] = ns
            line = cmd.decode(errors="replace")
            if "mmdebstrap" not in line:  # its own argv names every hook
                cmdlines.append(line)
        return ticks / TICK, wait, label_of(cmdlines)

    def run(self, done: threading.Event) -> None:
        last_cpu, _, label = self.tree()
        last = time.monotonic()
        while not done.wait(0.2):
            cpu, wait, now_label = self.tree()
            now = time.monotonic()
            # what ran during the interval: what ran at its start, unless that was idle
            label = now_label if label == "mmdebstrap (itself)" else label
            step = self.steps.setdefault(label, Step())
            step.wall += now - last
            step.cpu += max(0.0, cpu - last_cpu)
            step.wait += wait / 1e9
            last, last_cpu, label = now, max(cpu, last_cpu), now_label
            self.loads.append(os.getloadavg()[0])


#: (a string in the tree's command lines, the step it names), checked after maintainer scripts
# and unpacking; the first that matches wins
OTHER_STEPS = (
    ("/usr/lib/apt/methods/", "download (apt methods)"),
    ("ldconfig", "ldconfig"),
    ("sh -c ", "hooks (mmdebstrap --*-hook)"),
    ("dpkg", "dpkg (itself)"),
    ("apt-get", "apt (solver, lists)"),
)


def label_of(cmdlines: list[str]) -> str:
    """Name the step that the tree's processes are doing (the most specific one wins)."""
    joined = "\n".join(cmdlines)
    if "mkinitramfs" in joined or "update-initramfs" in joined:
        return "initramfs (update-initramfs)"
    if "update-ca-certificates" in joined:
        return "ca-certificates (update-ca-certificates)"
    scripts = SCRIPT.findall(joined)
    if scripts:
        pkg, script, arg = scripts[-1]
        return f"{pkg} {script} {arg}"
    if "dpkg-deb" in joined:
        debs = DEB.findall(joined)
        return f"unpack {debs[-1] if debs else '(essential set)'}"
    found = [label for needle, label in OTHER_STEPS if needle in joined]
    return found[0] if found else "mmdebstrap (itself)"


def table(title: str, rows: list[tuple[str, Step]]) -> None:
    print(f"\n{title}\n{'step':<52} {'wall s':>8} {'CPU s':>8} {'rq wait s':>9}")
    for name, s in rows:
        print(f"{name:<52} {s.wall:8.1f} {s.cpu:8.1f} {s.wait:9.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", nargs="?", default=str(REPO / "recipes" / "coral-usb-arm64.toml"))
    ap.add_argument("--out", type=Path, help="keep the tree and the log here (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the bootstrapped tree")
    ap.add_argument(
        "--cache",
        type=Path,
        help="put the finished tree into this kiln cache as the recipe's base (as kiln does)",
    )
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    loaded = load_recipe(args.recipe)
    arch = loaded.recipe.target.arch
    ensure_binfmt(arch)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-base-"))
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "root"
    argv = bootstrap_command(loaded, dest)
    argv.insert(1, "--verbose")
    env = {**os.environ, **arch_env(arch)}
    log = (out / "mmdebstrap.log").open("w")
    print(" ".join(argv), flush=True)
    load0 = os.getloadavg()
    t0 = time.monotonic()
    # A terminal, not a pipe: dpkg (C stdio, emulated) buffers a pipe and would print each
    # step only minutes after it ran.
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    sampler = Sampler(proc.pid)
    done = threading.Event()
    thread = threading.Thread(target=sampler.run, args=(done,), daemon=True)
    thread.start()
    with os.fdopen(primary, "rb", buffering=0) as tty:
        pending = b""
        while True:
            try:
                chunk = tty.read(4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            *lines, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line.strip():
                    log.write(f"{time.monotonic() - t0:8.1f} {line}\n")
    rc = proc.wait()
    done.set()
    thread.join()
    wall = time.monotonic() - t0
    log.close()
    steps = sampler.steps
    cpu = sum(s.cpu for s in steps.values())
    wait = sum(s.wait for s in steps.values())
    loads = sampler.loads or [0.0]
    print(
        f"\n{loaded.path.name}: mmdebstrap exit {rc}; wall {wall:.0f} s, CPU {cpu:.0f} s "
        f"(tree), run-queue wait >= {wait:.0f} s; load at start {load0[0]:.1f}, "
        f"during {min(loads):.1f}-{max(loads):.1f} (mean {sum(loads) / len(loads):.1f})"
    )
    if dest.exists():
        size = subprocess.run(["du", "-sm", str(dest)], capture_output=True, text=True, check=False)
        print(f"tree: {size.stdout.split()[0] if size.stdout else '?'} MB; log {log.name}")
    ranked = sorted(steps.items(), key=lambda kv: -kv[1].cpu)[: args.top]
    table("most CPU", ranked)
    table("most wall", sorted(steps.items(), key=lambda kv: -kv[1].wall)[: args.top])
    if rc == 0 and args.cache is not None:
        slot = args.cache / "base" / base_key(loaded)
        if not (slot / "complete").exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(slot)], check=False)
            slot.mkdir(parents=True)
            dest.rename(slot / "root")
            (slot / "complete").write_text(base_key(loaded) + "\n")
            print(f"cached as {slot}")
    if not args.keep and dest.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(dest)], check=False)
    return rc


if __name__ == "__main__":
    sys.exit(main())
