"""Site-LAN figures over a real veth pair (run as root): push throughput, device RSS, discovery.

1. ``kiln push``'s upload (:class:`image.lan.client.DeviceClient`) of one signed bundle into a
   file-backed device running ``appliance api serve`` in another network namespace: verified,
   written, read back and tried, as a real install; both ways: the default (a one-time ticket
   over pinned TLS, the body in the clear, docs/decisions.md §33) and ``--tls`` (all in TLS);
2. against, in the same run and over the same veth, a plain HTTP PUT of the same file to a
   stdlib ``http.server`` that writes the body to a file and fsyncs it (no TLS, no verify;
   :mod:`tools.lan_plain`), and, without ``--abba``, the tuning options for TLS measured on an
   HTTPS PUT to the same kind of server; ``--abba``: push and PUT ABBA-alternated in series;
3. laptop and device as two machines (docs/decisions.md §35, :mod:`tools.lan_link`): by
   default (``--pin split``) this process (the ``kiln push`` and PUT clients) runs on one CPU
   and the device side (``appliance api serve``, the PUT servers, every thread) on another,
   each veth end's receive work steered to its side's CPU, and every thread's allowed CPUs
   checked while the transfers run; ``--pin shared`` lets everything share every CPU (the
   figures before §35); ``--rate 1gbit|100mbit`` shapes the link like a site LAN;
4. the device process's RSS sampled every 10 ms during the transfers and its private memory,
   against the RSS of the device's agent running the reference model (:mod:`tools.lan_memory`);
   the CPU seconds the receiving process spent and each CPU's busy time;
5. the time a browse takes to resolve N devices advertising ``_edgekiln._tcp`` (processes).

Usage: ``python tools/bench_lan_push.py --abba --mib 64 --runs 6 --series 4 --devices 0
[--rate 1gbit] [--pin shared] [--put-sendfile]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image.lan.browse import browse
from image.lan.client import DeviceClient
from tools.lan_link import (
    RATES,
    AffinityLog,
    cpu_list,
    cpu_times,
    pin_tree,
    shape,
    softnet_processed,
    steer_rx,
)
from tools.lan_memory import agent_rss, rss_kib, uss_kib
from tools.lan_plain import PLAIN_SERVER, plain_put
from tools.lan_rig import LanDevice, Release, Veth, image


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads, ended ones too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def faults(pid: int) -> int:
    """Page faults (minor) of process ``pid`` so far."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


class Watch:
    """Samples, while a transfer runs: the receiving process's peak RSS (every 10 ms), its peak
    private memory and the CPUs every thread on both sides may use (every 50 ms), the same way
    for every variant."""

    def __init__(self, log: AffinityLog) -> None:
        self.log = log
        self.peaks: dict[str, list[int]] = {}
        self.uss: dict[str, list[int]] = {}

    def run(self, key: str, pid: int, transfer: Callable[[], float]) -> float:
        """``transfer()``'s seconds; ``pid`` receives (the device side)."""
        peak, private = [0], [0]
        stop = threading.Event()

        def sample() -> None:
            tick = 0
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                if tick % 5 == 0:
                    private[0] = max(private[0], uss_kib(pid))
                    self.log.sample("device", pid)
                    self.log.sample("laptop", os.getpid(), tree=False)
                tick += 1
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, name="bench-sampler")
        sampler.start()
        try:
            return transfer()
        finally:
            stop.set()
            sampler.join()
            self.peaks.setdefault(key, []).append(peak[0])
            self.uss.setdefault(key, []).append(private[0])


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values``."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclasses.dataclass
class Variant:
    """One way of sending the bundle: its key, description, the transfer and the receiver."""

    key: str
    what: str
    run: Callable[[], float]
    pid: int


@dataclasses.dataclass
class Tally:
    """Per variant: seconds, the receiver's CPU seconds, the sending thread's, per-CPU busy."""

    secs: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    faults: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    client: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    busy: dict[str, list[dict[int, float]]] = dataclasses.field(default_factory=dict)
    packets: dict[int, int] = dataclasses.field(default_factory=dict)

    def measure(self, watch: Watch, v: Variant) -> float:
        before, mine, minflt = cpu_s(v.pid), time.thread_time(), faults(v.pid)
        cpus, nets = cpu_times(), softnet_processed()
        seconds = watch.run(v.key, v.pid, v.run)
        after, nets_after = cpu_times(), softnet_processed()
        self.secs.setdefault(v.key, []).append(seconds)
        self.cpu.setdefault(v.key, []).append(cpu_s(v.pid) - before)
        self.faults.setdefault(v.key, []).append(faults(v.pid) - minflt)
        self.client.setdefault(v.key, []).append(time.thread_time() - mine)
        self.busy.setdefault(v.key, []).append({c: after[c][0] - cpus[c][0] for c in after})
        for c, n in nets_after.items():
            self.packets[c] = self.packets.get(c, 0) + n - nets.get(c, 0)
        return seconds

    def busy_median(self, key: str, cpu: int) -> float:
        return statistics.median(b.get(cpu, 0.0) for b in self.busy[key])


def abba_series(
    args: argparse.Namespace,
    bundle: Path,
    watch: Watch,
    put: Variant,
    push: Variant,
    before: Variant | None = None,
) -> Tally:
    """``--series`` series of ``--runs`` ABBA blocks (PUT, push, push, PUT / push, PUT, PUT,
    push alternately): a load that drifts linearly within a block cancels out of its ratio
    (sum of the two PUTs over sum of the two pushes). With ``before`` (the push into a device
    running another revision's code) each block is ABCCBA, rotated from block to block."""
    mb = bundle.stat().st_size / 1e6
    lap, dev = args.cpus
    print(f"bundle {mb:.1f} MB, {args.series} series x {args.runs} ABBA blocks; "
          "ratio = plain PUT seconds / kiln push seconds (>= 0.8: goal)")  # fmt: skip
    print(f"{'series':>6} {'load':>9} {'ratio q1':>8} {'median':>7} {'q3':>6} {'min':>6} "
          f"{'PUT MB/s':>9} {'push MB/s':>9} {'receiver CPU s':>15} {'sender CPU s':>13} "
          f"{'CPU' + str(dev) + ' busy s':>13} {'CPU' + str(lap) + ' busy s':>13}"
          "  (put/push)")  # fmt: skip
    print("(receiver CPU: the receiving process, all its threads; sender CPU: the sending "
          "thread; CPUn busy: that whole CPU during the transfer, other jobs' work "
          "included)")  # fmt: skip
    everything: list[float] = []
    whole = Tally()
    for series in range(args.series):
        load0 = os.getloadavg()[0]
        ratios: list[float] = []
        was: dict[str, list[float]] = {"put/before": [], "before/push": []}
        tally = Tally()
        kinds = [put, push] + ([before] if before else [])
        for block in range(args.runs):
            first = kinds[block % len(kinds) :] + kinds[: block % len(kinds)]
            got = dict.fromkeys((v.key for v in kinds), 0.0)
            for v in first + first[::-1]:
                got[v.key] += tally.measure(watch, v)
            ratios.append(got["put"] / got["push"])
            if before:
                was["put/before"].append(got["put"] / got["before"])
                was["before/push"].append(got["before"] / got["push"])
        everything += ratios
        for field in ("secs", "cpu", "client", "busy"):
            for key, values in getattr(tally, field).items():
                getattr(whole, field).setdefault(key, []).extend(values)
        for c, n in tally.packets.items():
            whole.packets[c] = whole.packets.get(c, 0) + n
        q1, med, q3 = quartiles(ratios)
        load = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
        sec, cpu, cl = tally.secs, tally.cpu, tally.client
        m = statistics.median
        print(f"{series + 1:>6} {load:>9} {q1:8.2f} {med:7.2f} {q3:6.2f} {min(ratios):6.2f} "
              f"{mb / m(sec['put']):9.0f} {mb / m(sec['push']):9.0f} "
              f"{m(cpu['put']):7.3f}/{m(cpu['push']):.3f} "
              f"{m(cl['put']):7.3f}/{m(cl['push']):.3f} "
              f"{tally.busy_median('put', dev):6.3f}/{tally.busy_median('push', dev):.3f} "
              f"{tally.busy_median('put', lap):6.3f}/"
              f"{tally.busy_median('push', lap):.3f}")  # fmt: skip
        if before:
            q1b, medb, q3b = quartiles(was["before/push"])
            mean = statistics.fmean
            print(f"{'':>16} {args.before}'s code: ratio median {m(was['put/before']):.2f}; "
                  f"this tree / {args.before}: speed median {medb:.3f} (quartiles {q1b:.3f}-"
                  f"{q3b:.3f}), receiver CPU per push {mean(cpu['push']):.4f} / "
                  f"{mean(cpu['before']):.4f} s = {sum(cpu['push']) / sum(cpu['before']):.3f}"
                  f" (mean of {len(cpu['push'])}); page faults per push "
                  f"{m(tally.faults['push']):.0f} / {m(tally.faults['before']):.0f}")  # fmt: skip
    q1, med, q3 = quartiles(everything)
    met = sum(r >= 0.8 for r in everything)
    print(f"all {len(everything)} blocks: ratio median {med:.2f} (quartiles {q1:.2f}-{q3:.2f}), "
          f">= 0.8 in {met} of {len(everything)}")  # fmt: skip
    return whole


def interleaved(
    args: argparse.Namespace, bundle: Path, watch: Watch, variants: list[Variant]
) -> Tally:
    """Every run measures each variant once, in turn; the median of each and its ratio."""
    tally = Tally()
    for _ in range(args.runs):
        for v in variants:
            tally.measure(watch, v)
    times, cpu = tally.secs, tally.cpu
    mb = bundle.stat().st_size / 1e6
    put_s = statistics.median(times["put"])
    print(f"bundle {mb:.1f} MB, median of {args.runs} interleaved runs")
    print(f"{'what':50} {'s':>7} {'MB/s':>8} {'ratio':>6} {'receiver CPU s':>15}")
    for v in variants:
        sec, used = statistics.median(times[v.key]), statistics.median(cpu[v.key])
        ratios = "/".join(f"{p / t:.2f}" for p, t in zip(times["put"], times[v.key], strict=True))
        print(f"{v.what:50} {sec:7.3f} {mb / sec:8.1f} {put_s / sec:6.2f} {used:15.3f}"
              f"  per run {ratios}")  # fmt: skip
    print(f"load average: {os.getloadavg()[0]:.1f} (1 min)")
    return tally


def report_memory(watch: Watch, idle: int, idle_uss: int, agent: dict[str, int] | None) -> None:
    """The device process's RSS and private memory, idle and peak during the pushes; the
    agent's RSS beside it."""
    push = [k for k in watch.peaks if k.startswith("push")]
    top = max(p for k in push for p in watch.peaks[k])
    uss = max(p for k in push for p in watch.uss[k])
    print(f"device RSS (appliance api serve): idle {idle / 1024:.1f} MiB, peak during push "
          f"{top / 1024:.1f} MiB (+{(top - idle) / 1024:.1f} MiB); private (USS) idle "
          f"{idle_uss / 1024:.1f}, peak {uss / 1024:.1f} MiB; plain PUT server peak "
          f"{max(watch.peaks['put']) / 1024:.1f} MiB")  # fmt: skip
    if agent is not None:
        mib = {k: v / 1024 for k, v in agent.items()}
        print(f"agent (reference model, 5 frames/s): agent {mib['agent']:.1f} MiB + pipeline "
              f"worker {mib['worker']:.1f} MiB = {mib['both']:.1f} MiB; the push's process at "
              f"its peak: {top / 1024 - mib['agent']:+.1f} MiB against the agent process, "
              f"{top / 1024 - mib['both']:+.1f} MiB against agent + worker")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="slot image size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=20, help="for the discovery figure")
    parser.add_argument("--series", type=int, default=4, help="ABBA series (with --abba)")
    parser.add_argument(
        "--abba",
        action="store_true",
        help="only kiln push against the plain PUT, ABBA-alternated, quartiles per series",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "shared"),
        default="split",
        help="split (default): the laptop side on one CPU, the device side on another, as two "
        "machines; shared: every process may run on every CPU (the old figures)",
    )
    parser.add_argument(
        "--cpus",
        default="",
        help="LAPTOP,DEVICE CPUs for --pin split (default: the first two this process may use)",
    )
    parser.add_argument(
        "--put-sendfile",
        action="store_true",
        help="the plain PUT's client sends the file by sendfile, as kiln push does (default: "
        "http.client's 1 MiB reads and sendall, as curl or requests send a file)",
    )
    parser.add_argument(
        "--before",
        default="",
        help="with --abba: also push into a second device running git revision REV's "
        "appliance code, alternated in the same blocks (before/after figures of a change)",
    )
    parser.add_argument(
        "--no-agent",
        action="store_true",
        help="skip running the device's agent (reference model) for its RSS",
    )
    parser.add_argument(
        "--rate",
        choices=("", *RATES),
        default="",
        help="shape the veth like a site LAN (token bucket, both directions); default: unshaped",
    )
    args = parser.parse_args()
    usable = sorted(os.sched_getaffinity(0))
    args.cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else usable[:2]
    if len(args.cpus) != 2 or args.cpus[0] == args.cpus[1]:
        parser.error("--pin split needs two CPUs: --cpus LAPTOP,DEVICE")
    return args


def setup_link(args: argparse.Namespace, veth: Veth, device_pids: list[int]) -> dict[str, str]:
    """Pin both sides and steer each veth end's receive work (split); shape (``--rate``).
    Returns the CPUs expected per side, for :meth:`AffinityLog.check`."""
    lap, dev = args.cpus
    expected: dict[str, str] = {}
    if args.pin == "split":
        for pid in device_pids:
            pin_tree(pid, {dev})
        pin_tree(os.getpid(), {lap}, tree=False)  # its children: the device
        expected = {"laptop": cpu_list({lap}), "device": cpu_list({dev})}
        steered = steer_rx([(None, veth.host_if, lap), (veth.ns, veth.dev_if, dev)])
        print(f"pinned: laptop side (this process: kiln push and PUT clients) CPU {lap}, "
              f"device side (appliance api serve, plain PUT servers) CPU {dev}; "
              f"receive steering (RPS): {', '.join(steered)}")  # fmt: skip
    else:
        print(f"shared: both sides may run on CPUs {cpu_list(os.sched_getaffinity(0))}")
    if args.rate:
        for line in shape([(None, veth.host_if), (veth.ns, veth.dev_if)], RATES[args.rate]):
            print(f"link: {line}")
    else:
        print("link: veth, unshaped")
    print("plain PUT client: " + ("sendfile" if args.put_sendfile else "http.client, 1 MiB writes"))
    return expected


class OldDevice(LanDevice):
    """A device whose ``appliance api serve`` runs another tree's ``appliance`` package."""

    def __init__(self, *args: Any, code: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.code = code

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.code)}


def old_tree(rev: str, root: Path) -> Path:
    """``appliance/`` of git revision ``rev``, extracted under ``root``."""
    tree = root / f"code-{rev}"
    tree.mkdir()
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "appliance"],
                             check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def stop_all(devices: list[LanDevice]) -> None:
    for d in devices:
        d.stop()


def paired(dev: LanDevice, veth: Veth, port: int) -> DeviceClient:
    """Start ``dev``'s API on ``port``; a client paired with it."""
    dev.start(veth, port)
    client = DeviceClient(veth.dev_addr, port, dev.fingerprint())
    client.token = client.json("POST", "/v1/pair", {"code": dev.pair_code()})["token"]
    return client


def discovery(
    args: argparse.Namespace, root: Path, release: Release, veth: Veth, devices: list[LanDevice]
) -> None:
    """The time a browse takes to resolve ``--devices`` advertising device processes."""
    for i in range(args.devices):
        d = LanDevice(root / f"d{i}", i + 1, release)
        devices.append(d)
        d.start(veth, 20443 + i, mdns=True, wait=False)
    for d in devices[1:]:
        d.wait_ready()
        if args.pin == "split" and d.proc is not None:  # the devices' CPU, as for the pushes
            pin_tree(d.proc.pid, {args.cpus[1]})
    time.sleep(2)
    browses: list[float] = []
    for _ in range(args.runs):
        start = time.perf_counter()
        seen = browse(30, [veth.host_addr], expect=args.devices)
        browses.append(time.perf_counter() - start)
        assert len(seen) == args.devices, len(seen)
    mid = statistics.median(browses)
    print(f"discovery of {args.devices} devices: median {mid:.2f} s, "
          f"max {max(browses):.2f} s over {args.runs} browses")  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.pin == "split":  # before any thread or child: all inherit it (devices re-pinned)
        os.sched_setaffinity(0, {args.cpus[0]})
    veth = Veth.make()
    devices: list[LanDevice] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
            root = Path(tmp)
            # `python -m` puts the working directory first on sys.path: it must not be a tree
            # with an appliance/ package, or --before's device would run this tree's code.
            os.chdir(root)
            release = Release(root / "release")
            size = args.mib * 1024 * 1024
            bundle = release.bundle("v2.ekb", image(2, size))
            dev = LanDevice(root / "dev", 0, release, size)
            devices.append(dev)
            client = paired(dev, veth, 18443)
            assert dev.proc is not None
            api = dev.data / "edgekiln" / "api"
            cert, key = str(api / "api-cert.pem"), str(api / "api-key.pem")

            def spawn(script: str, *argv: str) -> subprocess.Popen[bytes]:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", veth.ns, sys.executable, "-c", script, *argv],
                    stdout=subprocess.PIPE, env=env,
                )  # fmt: skip
                servers.append(proc)
                return proc

            env = dev.env()
            addr = veth.dev_addr
            plain = spawn(PLAIN_SERVER, addr, "18080", str(root / "plain.out"))
            if not args.abba:
                tls = spawn(PLAIN_SERVER, addr, "18081", str(root / "tls.out"), cert, key)
                into = spawn(
                    PLAIN_SERVER, addr, "18082", str(root / "into.out"), cert, key, "recv_into"
                )
            for proc in servers:
                assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            old = None
            if args.before:
                old = OldDevice(root / "old", 1, release, size, code=old_tree(args.before, root))
                devices.append(old)
                old_client = paired(old, veth, 18444)
            pids = [d.proc.pid for d in devices if d.proc] + [s.pid for s in servers]
            expected = setup_link(args, veth, pids)
            idle, idle_uss = rss_kib(dev.proc.pid), uss_kib(dev.proc.pid)
            log = AffinityLog()
            watch = Watch(log)

            def push_once(clear: bool, to: LanDevice = dev, by: DeviceClient = client) -> float:
                to.loader_file.unlink(missing_ok=True)  # A committed again: installable
                start = time.perf_counter()
                by.upload(bundle, clear=clear)
                return time.perf_counter() - start

            put = Variant("put", "plain HTTP PUT -> file + fsync (baseline)",
                          lambda: plain_put(veth, 18080, bundle, sendfile=args.put_sendfile),
                          plain.pid)  # fmt: skip
            push = Variant("push", "kiln push: ticket over TLS, bundle in the clear",
                           lambda: push_once(True), dev.proc.pid)  # fmt: skip
            if args.abba:
                was = None
                if old is not None and old.proc is not None:
                    was = Variant("before", f"kiln push into {args.before}'s code",
                                  lambda: push_once(True, old, old_client),
                                  old.proc.pid)  # fmt: skip
                tally = abba_series(args, bundle, watch, put, push, was)
            else:
                tally = interleaved(args, bundle, watch, [
                    put,
                    Variant("tls", "HTTPS PUT (TLS 1.3 default) -> file + fsync",
                            lambda: plain_put(veth, 18081, bundle, tls=True), tls.pid),
                    Variant("tls12", "HTTPS PUT, TLS 1.2 AES-128-GCM",
                            lambda: plain_put(veth, 18081, bundle, tls=True,
                                              cipher="ECDHE-ECDSA-AES128-GCM-SHA256"), tls.pid),
                    Variant("into", "HTTPS PUT, recv_into one 1 MiB buffer",
                            lambda: plain_put(veth, 18082, bundle, tls=True), into.pid),
                    Variant("push_tls", "kiln push --tls: TLS, verify, write, read back",
                            lambda: push_once(False), dev.proc.pid),
                    push,
                ])  # fmt: skip
            packets = ", ".join(f"CPU {c} {n}" for c, n in sorted(tally.packets.items()) if n)
            print(f"packets received (softirq, whole machine) during the transfers: {packets}")
            log.check(expected)
            agent = None
            if not args.no_agent:
                cpu = args.cpus[1] if args.pin == "split" else None
                agent = agent_rss(veth, root / "agent", env, cpu)
            report_memory(watch, idle, idle_uss, agent)
            stop_all(devices)
            if args.devices:
                discovery(args, root, release, veth, devices)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for d in devices:
            d.stop()
        veth.remove()


if __name__ == "__main__":
    main()
