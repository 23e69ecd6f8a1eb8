"""Install throughput into an image file and a loop device vs ``dd``; installer peak RSS.

For each image size: a signed bundle (compression none, and zstd) is installed by the real
installer (``appliance.ota.installer.install``) into a slot target, in a child process whose
peak RSS is read with wait4(); ``dd bs=1M conv=fsync`` writes the same image into the same kind
of target in the same run, alternating with the installs. Targets: ``file`` (a fresh sparse
image file, as the bench always used) and ``loop`` (a block device: ``losetup --direct-io=on``
over a preallocated file; needs root, skipped otherwise).
The install includes what dd does not: per-chunk sha256 verification (on worker threads), and
the read-back of the slot from the medium: each region is written with O_DIRECT, made durable
(fdatasync) and re-read with O_DIRECT on a second thread while later regions are written,
compared byte for byte with what was written; the "+sha256" rows also hash the re-read bytes
(one more sha256 pass). A second baseline, "dd+rb", adds the time of reading dd's output back
with O_DIRECT: the I/O of any install that re-reads, done one after the other. The
"page-cache" rows are the installer's other path (``sink_factory=FileSink``: written through
the page cache, 2 MiB windows re-read with O_DIRECT), the default before the O_DIRECT path.

Usage: ``python tools/bench_install.py [--sizes 64,256] [--repeat 5] [--targets file,loop]
[--dir DIR]`` (sizes in MiB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.bundle import Keyring, PayloadSource, TrustedKey, write_bundle

MIB = 1 << 20
REPEAT = 3
MODES = ("compare", "compare+sha256", "page-cache")
# The installer in a child process (so wait4 gives its own peak RSS), timing its phases.
CHILD = """
import json, sys, time
from pathlib import Path
from appliance.bundle import FileSink, Keyring, Policy
from appliance.ota.installer import install
from appliance.slots.filestore import file_loader
bundle, ring, state, slot_a, slot_b, mode = sys.argv[1:7]
marks = {"start": time.perf_counter()}
with open(bundle, "rb") as stream:
    install(stream, policy=Policy(Keyring.load(ring), "bench", "generic-x86-64", 0, None),
            loader=file_loader(Path(state)), booted="A",
            targets={"A": Path(slot_a), "B": Path(slot_b)},
            trace=lambda point: marks.__setitem__(point, time.perf_counter()),
            hash_readback=mode.endswith("sha256"),
            sink_factory=FileSink if mode == "page-cache" else None)
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


def one_run(
    root: Path,
    name: str,
    target: Path,
    image: Path,
    bundle: Path,
    ring: Path,
    runs: dict[str, list[float]],
    rss: dict[str, int],
) -> None:
    """One dd (plus its O_DIRECT re-read) or one install into ``target``; times into ``runs``."""
    if name == "dd":
        cmd = ["dd", f"if={image}", f"of={target}", "bs=1M", "conv=fsync,notrunc"]
        wrote = timed_child([*cmd, "status=none"])[0]
        # The I/O floor of an install that re-reads the slot after writing it.
        back = ["dd", f"if={target}", "of=/dev/null", "bs=8M", "iflag=direct"]
        read = timed_child([*back, "status=none"])[0]
        runs["dd"].append(wrote)
        runs["dd+rb"].append(wrote + read)
        return
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
            name,
        ]
    )
    phases = json.loads(out)
    runs[name].append(phases["total"])
    runs[f"{name} read_back"].append(phases["read_back"])
    rss[name] = max(rss[name], peak)


@contextlib.contextmanager
def slot_target(root: Path, kind: str, name: str, size: int) -> Iterator[Path]:
    """A fresh slot target: a sparse image file, or a loop device over a preallocated file."""
    backing = root / f"slot-{name}.img"
    backing.unlink(missing_ok=True)
    with backing.open("wb") as f:
        f.truncate(size)
    if kind == "file":
        os.sync()
        try:
            yield backing
        finally:
            backing.unlink()
        return
    fd = os.open(backing, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    os.sync()
    loop = subprocess.run(
        ["losetup", "--direct-io=on", "--find", "--show", str(backing)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    try:
        yield Path(loop)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=True, capture_output=True)
        backing.unlink()


def loop_devices_work(root: Path) -> bool:
    """True if this process may attach loop devices (root, loop driver present)."""
    try:
        with slot_target(root, "loop", "probe", MIB):
            return True
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        return False


def bench(
    root: Path,
    size_mib: int,
    compression: str,
    key: Ed25519PrivateKey,
    ring: Path,
    repeat: int,
    kind: str,
    modes: tuple[str, ...] = MODES,
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
    runs: dict[str, list[float]] = {"dd": [], "dd+rb": []}
    for mode in modes:
        runs |= {mode: [], f"{mode} read_back": []}
    rss = {mode: 0 for mode in modes}
    for _ in range(repeat):  # alternate dd and the installs; medians below
        for name in ("dd", *modes):
            with slot_target(root, kind, name, size) as target:
                one_run(root, name, target, image, bundle, ring, runs, rss)
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
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the files go (a real disk; created if missing)",
    )
    parser.add_argument("--targets", default="file,loop", help="slot targets: file, loop")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="install rows: " + ", ".join(MODES)
    )
    args = parser.parse_args()
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-install-") as tmp:
        root = Path(tmp)
        ring = root / "keyring.json"
        ring.write_bytes(Keyring(version=1, keys=(TrustedKey.from_public_key(raw),)).to_bytes())
        (root / "slot-a.img").write_bytes(b"")
        kinds = args.targets.split(",")
        modes = tuple(args.modes.split(","))
        if unknown := set(modes) - set(MODES):
            parser.error(
                f"--modes: unknown {', '.join(sorted(unknown))} (known: {', '.join(MODES)})"
            )
        if "loop" in kinds and not loop_devices_work(root):
            print("loop devices cannot be attached here (not root?): no loop rows")
            kinds.remove("loop")
        print(
            f"{'target':>6} {'image':>8} {'payload':>8} {'read-back':>15} "
            f"{'dd s':>6} {'dd+rb s':>7} "
            f"{'install s':>9} {'MiB/s':>6} {'rb tail s':>9} {'ratio':>6} {'vs floor':>8} "
            f"{'peak RSS':>9}",
            flush=True,
        )
        for size in (int(s) for s in args.sizes.split(",")):
            for kind in kinds:
                for compression in ("none", "zstd"):
                    rows = bench(root, size, compression, key, ring, args.repeat, kind, modes)
                    for mode, r in rows.items():
                        print(
                            f"{kind:>6} {size:>6}Mi {compression:>8} {mode:>15} {r['dd']:6.2f} "
                            f"{r['floor']:7.2f} {r['install']:9.2f} "
                            f"{size / r['install']:6.0f} {r['read_back']:9.2f} "
                            f"{r['dd'] / r['install']:6.2f} {r['floor'] / r['install']:8.2f} "
                            f"{r['rss_mib']:7.1f}Mi",
                            flush=True,
                        )
    print("ratio = dd time / install time (goal >= 0.9); dd+rb = dd plus `dd iflag=direct` reading")
    print("the written file back (the I/O any read-back install must do); vs floor = dd+rb /")
    print("install; rb tail = read-back left after the write (the rest overlaps it); file = a")
    print("fresh sparse image file, loop = losetup --direct-io=on over a preallocated file;")
    print(f"medians of {args.repeat} alternating runs; load")
    print(f"average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
