"""Install throughput into an image file vs ``dd`` of the same payload; installer peak RSS.

For each image size: a signed bundle (compression none, and zstd) is installed by the real
installer (``appliance.ota.installer.install``) into an image file, in a child process whose
peak RSS is read with wait4(); ``dd bs=1M conv=fsync`` writes the same image into another file
in the same run.
The install includes what dd does not: per-chunk sha256 verification, and the read-back of the
slot from the medium (page cache dropped) with a whole-image sha256, overlapped with the write.

Usage: ``python tools/bench_install.py [--sizes 64,256] [--dir DIR]`` (sizes in MiB).
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
bundle, ring, state, slot_a, slot_b = sys.argv[1:6]
marks = {"start": time.perf_counter()}
with open(bundle, "rb") as stream:
    install(stream, policy=Policy(Keyring.load(ring), "bench", "generic-x86-64", 0, None),
            loader=file_loader(Path(state)), booted="A",
            targets={"A": Path(slot_a), "B": Path(slot_b)},
            trace=lambda point: marks.__setitem__(point, time.perf_counter()))
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
    root: Path, size_mib: int, compression: str, key: Ed25519PrivateKey, ring: Path
) -> dict[str, float]:
    size = size_mib * MIB
    image = root / f"image-{size_mib}.img"
    if not image.exists():
        image_file(image, size)
    bundle = root / f"v2-{size_mib}-{compression}.bundle"
    with bundle.open("wb") as out:
        write_bundle(
            out,
            key=key,
            product="bench",
            targets=["generic-x86-64"],
            version="2.0.0",
            security_version=1,
            created=1_750_000_000,
            payloads=[PayloadSource.slot_image(image, compression=compression)],
        )
    runs: dict[str, list[float]] = {"dd": [], "install": [], "write": [], "read_back": []}
    rss = 0
    for _ in range(REPEAT):  # alternate dd and install; medians below
        for name in ("dd", "install"):
            target = root / f"slot-{name}.img"
            target.unlink(missing_ok=True)
            with target.open("wb") as f:
                f.truncate(size)
            os.sync()
            if name == "dd":
                cmd = ["dd", f"if={image}", f"of={target}", "bs=1M", "conv=fsync,notrunc"]
                runs["dd"].append(timed_child([*cmd, "status=none"])[0])
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
                ]
            )
            phases = json.loads(out)
            runs["install"].append(phases["total"])
            runs["write"].append(phases["write"])
            runs["read_back"].append(phases["read_back"])
            rss = max(rss, peak)
    result = {k: statistics.median(v) for k, v in runs.items()}
    result["rss_mib"] = rss / MIB
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="64,256", help="image sizes in MiB")
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
            f"{'image':>8} {'payload':>8} {'dd s':>6} {'install s':>9} {'MiB/s':>6} "
            f"{'rb tail s':>9} {'ratio':>6} {'peak RSS':>9}"
        )
        for size in (int(s) for s in args.sizes.split(",")):
            for compression in ("none", "zstd"):
                r = bench(root, size, compression, key, ring)
                print(
                    f"{size:>6}Mi {compression:>8} {r['dd']:6.2f} {r['install']:9.2f} "
                    f"{size / r['install']:6.0f} {r['read_back']:9.2f} "
                    f"{r['dd'] / r['install']:6.2f} {r['rss_mib']:7.1f}Mi"
                )
    print("ratio = dd time / install time (goal >= 0.9); rb tail = read-back left after the")
    print(f"write (the rest overlaps it); medians of {REPEAT} alternating runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
