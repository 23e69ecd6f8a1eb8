#!/usr/bin/env python3
"""Benchmark: verify-and-stream a bundle into a file sink, against ``sha256sum`` of the payload.

For each payload size and compression, in the same run:
  baseline  ``sha256sum PAYLOAD`` (page cache warm), wall time
  stream    a fresh process: open_bundle + stream_payload into a FileSink (os.pwrite) + finish;
            timed inside the process, without and with the final fsync; its peak RSS
The ratio is baseline time / stream time (1.0 = as fast as just hashing the payload once).
Goal (issue 4): ratio >= 0.8, peak RSS < 64 MiB and flat across payload sizes.

    .venv/bin/python tools/bench_bundle.py                # 512 MiB and 128 MiB, none + zstd
    .venv/bin/python tools/bench_bundle.py --sizes 64     # quick
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MIB = 1 << 20


def make_payload(path: Path, size_mib: int) -> None:
    """Half random, half repetitive text per MiB: zstd shrinks it to roughly half, like a rootfs."""
    text = (
        b"usr/lib/python3/dist-packages/edgekiln/appliance/bundle/reader.py 0644 root\n" * 7000
    )[: MIB // 2]
    with open(path, "wb") as out:
        for _ in range(size_mib):
            out.write(os.urandom(MIB // 2))
            out.write(text)


def build_bundle(payload: Path, out: Path, compression: str, key_seed: bytes) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.bundle import PayloadSource, write_bundle

    key = Ed25519PrivateKey.from_private_bytes(key_seed)
    with open(out, "wb") as handle:
        write_bundle(
            handle,
            key=key,
            product="bench",
            targets=["generic-x86-64"],
            version="1.0.0",
            security_version=1,
            created=int(time.time()),
            payloads=[PayloadSource("rootfs.img", "full", payload, compression)],
            spool_dir=out.parent,
        )


def child(bundle: Path, sink_path: Path, key_seed_hex: str) -> None:
    """Runs in a fresh process: stream the bundle into a file sink; print timings and peak RSS."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from appliance.bundle import FileSink, Keyring, NullSink, Policy, TrustedKey, open_bundle

    pub = (
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key_seed_hex))
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    policy = Policy(Keyring(1, (TrustedKey.from_public_key(pub),)), "bench", "generic-x86-64")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    class TimedSink(FileSink):
        flush_seconds = 0.0

        def flush(self) -> None:
            t = time.perf_counter()
            super().flush()
            TimedSink.flush_seconds += time.perf_counter() - t

    start = time.perf_counter()
    with open(bundle, "rb", buffering=0) as raw:
        verified = open_bundle(io.BufferedReader(raw, buffer_size=MIB), policy, str(bundle))
        verified.stream_payload("rootfs.img", NullSink())
        verified.finish()
    null_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with (
        open(bundle, "rb", buffering=0) as raw,
        TimedSink(sink_path, create=True, truncate=True) as sink,
    ):
        stream = io.BufferedReader(raw, buffer_size=MIB)
        verified = open_bundle(stream, policy, str(bundle))
        verified.stream_payload("rootfs.img", sink)
        verified.finish()
    total = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds_with_fsync": total,
                "seconds": total - TimedSink.flush_seconds,
                "null_seconds": null_seconds,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "rss_after_imports_kib": rss_before,
            }
        )
    )


def hash_seconds(tool: list[str], path: Path) -> float:
    start = time.perf_counter()
    subprocess.run([*tool, str(path)], check=True, capture_output=True)
    return time.perf_counter() - start


OPENSSL = ["openssl", "dgst", "-sha256"] if shutil.which("openssl") else None


def warm(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(8 * MIB):
            pass


def run_case(work: Path, size_mib: int, compression: str, repeats: int) -> dict[str, Any]:
    payload = work / f"payload-{size_mib}.img"
    if not payload.exists():
        make_payload(payload, size_mib)
    seed = os.urandom(32)
    bundle = work / f"bench-{size_mib}-{compression}.bundle"
    t = time.perf_counter()
    build_bundle(payload, bundle, compression, seed)
    build_s = time.perf_counter() - t
    best: dict[str, float] = {}
    base = fast = float("inf")
    for _ in range(repeats):
        warm(payload)
        base = min(base, hash_seconds(["sha256sum"], payload))
        if OPENSSL:
            fast = min(fast, hash_seconds(OPENSSL, payload))
        warm(bundle)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(bundle), str(work / "sink.img"), seed.hex()],
            check=True,
            capture_output=True,
            text=True,
        )
        res = json.loads(out.stdout)
        if not best or res["seconds"] < best["seconds"]:
            best = res
        (work / "sink.img").unlink()
    assert (work / "sink.img").exists() is False
    bundle_size = bundle.stat().st_size
    bundle.unlink()
    return {
        "size_mib": size_mib,
        "compression": compression,
        "bundle_mib": bundle_size / MIB,
        "build_s": build_s,
        "sha256sum_s": base,
        "stream_s": best["seconds"],
        "stream_fsync_s": best["seconds_with_fsync"],
        "ratio": base / best["seconds"],
        "verify_only_s": best["null_seconds"],
        "ratio_verify_only": base / best["null_seconds"],
        "openssl_s": fast,
        "ratio_openssl": fast / best["seconds"],
        "ratio_with_fsync": base / best["seconds_with_fsync"],
        "peak_rss_mib": best["peak_rss_kib"] / 1024,
        "rss_after_imports_mib": best["rss_after_imports_kib"] / 1024,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="512,128", help="payload sizes in MiB, comma-separated")
    parser.add_argument("--compression", default="none,zstd", help="none, zstd or both")
    parser.add_argument("--repeats", type=int, default=2, help="best of N runs")
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temp dir)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.dir))
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            for comp in args.compression.split(","):
                rows.append(run_case(work, size, comp, args.repeats))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = (
        f"{'payload':>8} {'wire':>5} {'bundle':>8} {'sha256sum':>10} {'stream':>8} {'ratio':>6} "
        f"{'+fsync':>8} {'ratio':>6} {'peak RSS':>9} {'openssl':>8} {'ratio':>6} "
        f"{'no-sink':>8} {'ratio':>6}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['size_mib']:>5}MiB {r['compression']:>5} {r['bundle_mib']:>5.0f}MiB "
            f"{r['sha256sum_s']:>9.3f}s {r['stream_s']:>7.3f}s {r['ratio']:>6.2f} "
            f"{r['stream_fsync_s']:>7.3f}s {r['ratio_with_fsync']:>6.2f} "
            f"{r['peak_rss_mib']:>6.1f}MiB "
            f"{r['openssl_s']:>7.3f}s {r['ratio_openssl']:>6.2f} "
            f"{r['verify_only_s']:>7.3f}s {r['ratio_verify_only']:>6.2f}"
        )
    print(
        "ratio = sha256sum time / verify-and-stream time (goal >= 0.8); +fsync includes the sink's "
        "final fsync; openssl = `openssl dgst -sha256` (SHA-NI) as a stricter baseline "
        "(its ratio is openssl time / stream time); no-sink = verify into a NullSink (ratio vs "
        "sha256sum); "
        "peak RSS goal < 64 MiB"
    )


if __name__ == "__main__":
    main()
