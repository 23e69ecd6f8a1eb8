"""Laptop and device as two machines on one host, for ``tools/bench_lan_push.py``.

On a site LAN the technician's laptop and the device are two computers: what one side spends
in CPU does not slow the other. The bench reproduces that on a 2-core host by pinning each side
to its own CPU, every thread of every process involved (checked while the transfer runs, not
only set), and by steering each veth end's receive processing (the kernel's softirq work for
the packets that side receives, RPS) to that side's CPU: without it a veth delivers the
device's incoming packets on the laptop's CPU, where the sending call ran.

The link itself can be shaped like a site LAN (:func:`shape`): a token bucket at the NIC's
line rate on both ends (data one way, ACKs the other), with Ethernet's per-frame overhead on
the wire (preamble, start delimiter, FCS and inter-frame gap: 24 bytes) counted.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path

#: bytes a frame costs on an Ethernet wire beyond what the kernel counts (preamble 7 + SFD 1 +
#: FCS 4 + inter-frame gap 12)
ETHERNET_OVERHEAD = 24
RATES = {"1gbit": 1_000_000_000, "100mbit": 100_000_000}


class PinningFailed(RuntimeError):
    """A thread of a pinned side runs (or may run) on a CPU other than its side's."""


def cpu_list(cpus: Iterable[int]) -> str:
    """``{0, 1}`` -> ``"0,1"`` (the form ``Cpus_allowed_list`` uses for single CPUs)."""
    return ",".join(str(c) for c in sorted(cpus))


def _allowed(status: Path) -> str:
    for line in status.read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return "?"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of each of its threads)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the thread just ended
                continue
    return found


def threads(pid: int, tree: bool = True) -> list[tuple[int, int, str]]:
    """(pid, tid, allowed CPUs) of every thread of ``pid`` (and its descendants: ``tree``)."""
    out = []
    for proc in descendants(pid) if tree else [pid]:
        for task in Path(f"/proc/{proc}/task").glob("*"):
            try:
                out.append((proc, int(task.name), _allowed(task / "status")))
            except OSError:  # ended meanwhile
                continue
    return out


def _command(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [" ".join(w.decode(errors="replace").split()) for w in argv[:6] if w]
    return " ".join(w if len(w) < 24 else w[:10] + "..." for w in words)


def pin_tree(pid: int, cpus: set[int], tree: bool = True) -> None:
    """Pin every thread of ``pid`` (and its descendants: ``tree``) to ``cpus``, until a pass
    finds none left to move (a thread started meanwhile by an unpinned one is caught by the
    next pass; threads started later inherit the pinned creator's mask)."""
    want = cpu_list(cpus)
    for _ in range(20):
        moved = 0
        for _pid, tid, allowed in threads(pid, tree):
            if allowed != want:
                try:
                    os.sched_setaffinity(tid, cpus)
                except ProcessLookupError:
                    continue
                moved += 1
        if not moved:
            return
    raise PinningFailed(f"threads of {pid} keep appearing off CPU {want}")


@dataclasses.dataclass
class AffinityLog:
    """Every thread seen during the transfers, per side and process, and the CPUs it was
    allowed."""

    seen: dict[tuple[str, int], dict[int, set[str]]] = dataclasses.field(default_factory=dict)
    names: dict[int, str] = dataclasses.field(default_factory=dict)

    def sample(self, side: str, pid: int, tree: bool = True) -> None:
        for proc, tid, allowed in threads(pid, tree):
            if proc not in self.names:
                self.names[proc] = _command(proc)
            self.seen.setdefault((side, proc), {}).setdefault(tid, set()).add(allowed)

    def check(self, expected: dict[str, str]) -> None:
        """Print what was seen; raise :class:`PinningFailed` if a side's thread strayed."""
        wrong = []
        for (side, proc), tids in sorted(self.seen.items()):
            masks = set().union(*tids.values())
            print(f"  affinity {side:6} pid {proc} ({self.names[proc]}): {len(tids)} threads "
                  f"seen, allowed CPUs {' / '.join(sorted(masks))}")  # fmt: skip
            if side in expected and masks != {expected[side]}:
                wrong.append(f"{side} pid {proc}: CPUs {' / '.join(sorted(masks))}")
        if wrong:
            raise PinningFailed("; ".join(wrong) + f" (expected {expected})")


def _netns(ns: str | None, *cmd: str, data: str | None = None) -> str:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    proc = subprocess.run(full, input=data, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


def steer_rx(ends: list[tuple[str | None, str, int]]) -> list[str]:
    """RPS: each (namespace, interface, CPU)'s received packets are processed on that CPU.

    Returns what was set, read back from sysfs (as seen inside the interface's namespace)."""
    done = []
    for ns, ifname, cpu in ends:
        queues = _netns(ns, "ls", f"/sys/class/net/{ifname}/queues").split()
        for queue in (q for q in queues if q.startswith("rx-")):
            path = f"/sys/class/net/{ifname}/queues/{queue}/rps_cpus"
            _netns(ns, "tee", path, data=f"{1 << cpu:x}\n")
            done.append(f"{ifname}/{queue} rps_cpus={_netns(ns, 'cat', path).strip()}")
    return done


def shape(ends: list[tuple[str | None, str]], rate: int) -> list[str]:
    """A token bucket at ``rate`` bit/s on each (namespace, interface)'s egress; returns
    ``tc qdisc show`` of each."""
    burst = max(128 * 1024, rate // 8 // 500)  # 2 ms at line rate; a GSO packet (64 KiB) fits
    shown = []
    for ns, ifname in ends:
        tbf = ["tbf", "rate", str(rate), "burst", str(burst), "latency", "20ms"]
        tbf += ["overhead", str(ETHERNET_OVERHEAD)]
        _netns(ns, "tc", "qdisc", "replace", "dev", ifname, "root", *tbf)
        shown.append(_netns(ns, "tc", "qdisc", "show", "dev", ifname).strip())
    return shown


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy seconds, of which softirq) since boot, from ``/proc/stat``."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            v = [int(x) for x in values]
            idle = v[3] + v[4]
            out[int(name[3:])] = ((sum(v[:8]) - idle) / tick, v[6] / tick)
    return out


def softnet_processed() -> dict[int, int]:
    """Per CPU: packets its network receive softirq processed (``/proc/net/softnet_stat``)."""
    out = {}
    for i, line in enumerate(Path("/proc/net/softnet_stat").read_text().splitlines()):
        fields = line.split()
        cpu = int(fields[12], 16) if len(fields) > 12 else i
        out[cpu] = int(fields[0], 16)
    return out
