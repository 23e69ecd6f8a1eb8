"""Site-LAN figures over a real veth pair (run as root): push throughput, device RSS, discovery.

1. ``kiln push``'s upload (:class:`image.lan.client.DeviceClient`, TLS, pinned) of one signed
   bundle into a file-backed device running ``appliance api serve`` in another network
   namespace: verified, written, read back and tried, as a real install;
2. against, in the same run and over the same veth, a plain HTTP PUT of the same file to a
   stdlib ``http.server`` that writes the body to a file and fsyncs it (no TLS, no verify);
3. the device process's RSS sampled every 10 ms during the push (peak minus idle), and the CPU
   seconds the receiving process spent (device: TLS, verify, write, read back; plain server:
   read and write): on a loaded machine the wall-clock ratio follows the CPU each side needs;
4. the time a browse takes to resolve N devices advertising ``_edgekiln._tcp`` (processes).

Usage: ``python tools/bench_lan_push.py [--mib 128] [--runs 3] [--devices 20]``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image.lan.browse import browse
from image.lan.client import DeviceClient
from tools.lan_rig import LanDevice, Release, Veth, image

PLAIN_SERVER = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    out = sys.argv[3]
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_PUT(self):
            left = int(self.headers["Content-Length"])
            with open(out, "wb") as f:
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    f.write(data)
                    left -= len(data)
                f.flush(); os.fsync(f.fileno())
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *a): pass
    server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
    if len(sys.argv) > 4:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[4], sys.argv[5])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
    """
)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def plain_put(veth: Veth, port: int, bundle: Path, tls: bool = False) -> float:
    """Seconds to PUT ``bundle`` to the plain server (HTTPS when ``tls``)."""
    if tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            veth.dev_addr, port, timeout=120, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(veth.dev_addr, port, timeout=120)
    start = time.perf_counter()
    with bundle.open("rb") as handle:
        conn.request(
            "PUT", "/x", body=handle, headers={"Content-Length": str(bundle.stat().st_size)}
        )
    conn.getresponse().read()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def timed_push(client: DeviceClient, bundle: Path, pid: int) -> tuple[float, int]:
    """Seconds of one upload+install, and the device's peak RSS (KiB) meanwhile."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        client.upload(bundle)
    finally:
        stop.set()
        sampler.join()
    return time.perf_counter() - start, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="slot image size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--devices", type=int, default=20, help="for the discovery figure")
    args = parser.parse_args()
    veth = Veth.make()
    devices: list[LanDevice] = []
    servers: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
            root = Path(tmp)
            release = Release(root / "release")
            size = args.mib * 1024 * 1024
            bundle = release.bundle("v2.ekb", image(2, size))
            dev = LanDevice(root / "dev", 0, release, size)
            devices.append(dev)
            dev.start(veth, 18443)
            assert dev.proc is not None
            client = DeviceClient(veth.dev_addr, 18443, dev.fingerprint())
            client.token = client.json("POST", "/v1/pair", {"code": dev.pair_code()})["token"]
            plain = subprocess.Popen(
                ["ip", "netns", "exec", veth.ns, sys.executable, "-c", PLAIN_SERVER,
                 veth.dev_addr, "18080", str(root / "plain.out")],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            servers.append(plain)
            api = dev.data / "edgekiln" / "api"
            tls = subprocess.Popen(
                ["ip", "netns", "exec", veth.ns, sys.executable, "-c", PLAIN_SERVER,
                 veth.dev_addr, "18081", str(root / "tls.out"),
                 str(api / "api-cert.pem"), str(api / "api-key.pem")],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            servers.append(tls)
            for proc in (plain, tls):
                assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            pushes, puts, tls_puts, peaks = [], [], [], []
            cpu: dict[str, list[float]] = {"put": [], "tls": [], "push": []}
            idle = rss_kib(dev.proc.pid)
            for _ in range(args.runs):
                before = cpu_s(plain.pid)
                puts.append(plain_put(veth, 18080, bundle))
                cpu["put"].append(cpu_s(plain.pid) - before)
                before = cpu_s(tls.pid)
                tls_puts.append(plain_put(veth, 18081, bundle, tls=True))
                cpu["tls"].append(cpu_s(tls.pid) - before)
                dev.loader_file.unlink(missing_ok=True)  # A committed again: installable
                before = cpu_s(dev.proc.pid)
                seconds, peak = timed_push(client, bundle, dev.proc.pid)
                cpu["push"].append(cpu_s(dev.proc.pid) - before)
                pushes.append(seconds)
                peaks.append(peak)
            mb = bundle.stat().st_size / 1e6
            push_s, put_s = statistics.median(pushes), statistics.median(puts)
            tls_s = statistics.median(tls_puts)
            print(f"bundle {mb:.1f} MB, median of {args.runs} runs, veth {veth.host_if}")
            rows = [
                ("plain HTTP PUT -> file + fsync (baseline)", put_s, 1.0, "put"),
                ("HTTPS PUT (stdlib ssl) -> file + fsync", tls_s, put_s / tls_s, "tls"),
                ("kiln push: TLS, verify, write, read back", push_s, put_s / push_s, "push"),
            ]
            print(f"{'what':44} {'s':>7} {'MB/s':>8} {'ratio':>6} {'receiver CPU s':>15}")
            for what, sec, ratio, key in rows:
                used = statistics.median(cpu[key])
                print(f"{what:44} {sec:7.3f} {mb / sec:8.1f} {ratio:6.2f} {used:15.3f}")
            print(f"load average: {os.getloadavg()[0]:.1f} (1 min)")
            top = max(peaks)
            print(
                f"device RSS: idle {idle / 1024:.1f} MiB, peak during push {top / 1024:.1f} MiB "
                f"(+{(top - idle) / 1024:.1f} MiB)"
            )
            dev.stop()
            if not args.devices:
                return
            for i in range(args.devices):
                d = LanDevice(root / f"d{i}", i + 1, release)
                devices.append(d)
                d.start(veth, 20443 + i, mdns=True, wait=False)
            for d in devices[1:]:
                d.wait_ready()
            time.sleep(2)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                seen = browse(30, [veth.host_addr], expect=args.devices)
                times.append(time.perf_counter() - start)
                assert len(seen) == args.devices, len(seen)
            print(f"discovery of {args.devices} devices: median {statistics.median(times):.2f} s, "
                  f"max {max(times):.2f} s over {args.runs} browses")  # fmt: skip
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for d in devices:
            d.stop()
        veth.remove()


if __name__ == "__main__":
    main()
