"""Install throughput into an image file vs ``dd`` of the same payload; installer peak RSS.

For each image size: a signed bundle (compression none, and zstd) is installed by the real
installer (``appliance.ota.installer.install``) into an image file, in a child process whose
peak RSS is read with wait4(); ``dd bs=1M conv=fsync`` writes the same image into another file
in the same run.
The install includes what dd does not: per-chunk sha256 verification (on worker threads), and
the read-back of the slot from the medium (O_DIRECT), compared with the verified chunks window by
window while later windows are written; the "+sha256" rows also hash the re-read bytes (the
whole-image digest as read back: one more sha256 pass). A second baseline, "dd+rb", adds the
time of reading dd's output back with O_DIRECT: the I/O floor of any install that re-reads.

Usage: ``python tools/bench_install.py [--sizes 64,256] [--repeat 5] [--dir DIR]`` (MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.bundle import Keyring, PayloadSource, TrustedKey, write_bundle

MIB = 1 << 20
REPEAT = 3
# The installer in a child process (so wait4 gives its own peak RSS), timing its phases.
CHILD = """
import json, sys, time
from pathlib import Path
from appliance.bundle import Keyring, Policy
from appliance.ota.installer import install
from appliance.slots.filestore import file_loader
bundle, ring, state, slot_a, slot_b, hashed = sys.argv[1:7]
marks = {"start": time.perf_counter()}
with open(bundle, "rb") as stream:
    install(stream, policy=Policy(Keyring.load(ring), "bench", "generic-x86-64", 0, None),
            loader=file_loader(Path(state)), booted="A",
            targets={"A": Path(slot_a), "B": Path(slot_b)},
            trace=lambda point: marks.__setitem__(point, time.perf_counter()),
            hash_readback=hashed == "1")
print(json.dumps({"write": marks["finished"] - marks["start"],
                  "read_back": marks["read-back"] - marks["finished"],
                  "total": marks["tried"] - marks["start"]}))
"""


def timed_child(cmd: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stdout) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss * 1024, out


def image_file(path: Path, size: int) -> None:
    """Random blocks with some zero runs (as real root filesystems have)."""
    with path.open("wb") as f:
        for i in range(size // MIB):
            f.write(os.urandom(MIB) if i % 4 else bytes(MIB))


def bench(
    root: Path, size_mib: int, compression: str, key: Ed25519PrivateKey, ring: Path, repeat: int
) -> dict[str, dict[str, float]]:
    size = size_mib * MIB
    image = root / f"image-{size_mib}.img"
    if not image.exists():
        image_file(image, size)
    bundle = root / f"v2-{size_mib}-{compression}.bundle"
    with bundle.open("wb") as stream:
        write_bundle(
            stream,
            key=key,
            product="bench",
            targets=["generic-x86-64"],
            version="2.0.0",
            security_version=1,
            created=1_750_000_000,
            payloads=[PayloadSource.slot_image(image, compression=compression)],
        )
    modes = ("compare", "compare+sha256")
    runs: dict[str, list[float]] = {"dd": [], "dd+rb": []}
    for mode in modes:
        runs |= {mode: [], f"{mode} read_back": []}
    rss = {mode: 0 for mode in modes}
    for _ in range(repeat):  # alternate dd and the installs; medians below
        for name in ("dd", *modes):
            target = root / f"slot-{name}.img"
            target.unlink(missing_ok=True)
            with target.open("wb") as f:
                f.truncate(size)
            os.sync()
            if name == "dd":
                cmd = ["dd", f"if={image}", f"of={target}", "bs=1M", "conv=fsync,notrunc"]
                wrote = timed_child([*cmd, "status=none"])[0]
                # The I/O floor of any install that re-reads the slot from the medium.
                back = ["dd", f"if={target}", "of=/dev/null", "bs=8M", "iflag=direct"]
                read = timed_child([*back, "status=none"])[0]
                runs["dd"].append(wrote)
                runs["dd+rb"].append(wrote + read)
                target.unlink()
                continue
            state = root / "slots.env"
            state.unlink(missing_ok=True)
            _, peak, out = timed_child(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    str(bundle),
                    str(ring),
                    str(state),
                    str(root / "slot-a.img"),
                    str(target),
                    "1" if name.endswith("sha256") else "0",
                ]
            )
            phases = json.loads(out)
            runs[name].append(phases["total"])
            runs[f"{name} read_back"].append(phases["read_back"])
            rss[name] = max(rss[name], peak)
            target.unlink()
    dd = statistics.median(runs["dd"])
    floor = statistics.median(runs["dd+rb"])
    return {
        mode: {
            "dd": dd,
            "floor": floor,
            "install": statistics.median(runs[mode]),
            "read_back": statistics.median(runs[f"{mode} read_back"]),
            "rss_mib": rss[mode] / MIB,
        }
        for mode in modes
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64,256", help="image sizes in MiB")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="alternating runs per row")
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a real disk)")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-install-") as tmp:
        root = Path(tmp)
        ring = root / "keyring.json"
        ring.write_bytes(Keyring(version=1, keys=(TrustedKey.from_public_key(raw),)).to_bytes())
        (root / "slot-a.img").write_bytes(b"")
        print(
            f"{'image':>8} {'payload':>8} {'read-back':>15} {'dd s':>6} {'dd+rb s':>7} "
            f"{'install s':>9} {'MiB/s':>6} {'rb tail s':>9} {'ratio':>6} {'vs floor':>8} "
            f"{'peak RSS':>9}",
            flush=True,
        )
        for size in (int(s) for s in args.sizes.split(",")):
            for compression in ("none", "zstd"):
                for mode, r in bench(root, size, compression, key, ring, args.repeat).items():
                    print(
                        f"{size:>6}Mi {compression:>8} {mode:>15} {r['dd']:6.2f} "
                        f"{r['floor']:7.2f} {r['install']:9.2f} {size / r['install']:6.0f} "
                        f"{r['read_back']:9.2f} {r['dd'] / r['install']:6.2f} "
                        f"{r['floor'] / r['install']:8.2f} {r['rss_mib']:7.1f}Mi",
                        flush=True,
                    )
    print("ratio = dd time / install time (goal >= 0.9); dd+rb = dd plus `dd iflag=direct` reading")
    print("the written file back (the I/O any read-back install must do); vs floor = dd+rb /")
    print("install; rb tail = read-back left after the write (the rest overlaps it);")
    print(f"medians of {args.repeat} alternating runs; load")
    print(f"average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
