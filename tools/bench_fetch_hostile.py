#!/usr/bin/env python3
"""Peak RSS of ``appliance update fetch`` against a hostile mirror, next to a normal fetch.

A loopback mirror (tests/ota/hostile.py) answers with a canonical ``manifest.json`` header
that declares 400 MiB or 8 GiB. ``appliance update fetch`` runs as a child process each time;
its peak RSS comes from ``wait4``. The baseline, in the same run, is the same command fetching
a normal small signed bundle. Prints one row per case: exit code, peak RSS and its ratio to the
baseline, requests the mirror answered, bytes it sent, files left in ``updates/``.

    .venv/bin/python tools/bench_fetch_hostile.py                  # this checkout
    .venv/bin/python tools/bench_fetch_hostile.py --code /tmp/old  # another checkout's appliance

``--cap-mib`` stops the mirror after that many bytes per request (default 1024), so measuring
an unfixed checkout does not try to buffer 8 GiB on a shared machine.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.bundle import Keyring, PayloadSource, TrustedKey, write_bundle
from tests.bundle.kit import CREATED, KEY, PRODUCT, TARGET, raw_pub
from tests.ota.hostile import Body, Bytes, LyingHead, Mirror, serve

MIB = 1 << 20


def small_bundle() -> bytes:
    image = random.Random(1).randbytes(2 * MIB)
    out = io.BytesIO()
    write_bundle(
        out, key=KEY, product=PRODUCT, targets=[TARGET], version="2.0.0", security_version=1,
        created=CREATED, payloads=[PayloadSource("rootfs.img.zst", "full", image, "zstd")],
    )  # fmt: skip
    return out.getvalue()


def fetch_once(body: Body, work: Path, code: Path | None) -> tuple[int, float, Mirror, int]:
    """(exit code, peak RSS MiB, mirror record, files left in updates/)."""
    ring = work / "ring.json"
    ring.write_bytes(Keyring(1, (TrustedKey.from_public_key(raw_pub(KEY)),)).to_bytes())
    data = Path(tempfile.mkdtemp(dir=work))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code or Path(__file__).resolve().parents[1])
    mirror = Mirror({"/x.bundle": body})
    with serve(mirror) as url:
        argv = [
            sys.executable, "-m", "appliance.cli", "update", "fetch", f"{url}/x.bundle",
            "--data-dir", str(data), "--keyring", str(ring), "--product", PRODUCT,
            "--target", TARGET, "--retries", "0",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, env=env, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.stderr.close()  # type: ignore[union-attr]
    updates = data / "updates"
    left = len(list(updates.iterdir())) if updates.exists() else 0
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, mirror, left


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", type=Path, help="checkout whose appliance package to run")
    parser.add_argument("--cap-mib", type=int, default=1024, help="mirror bytes per request")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cap = args.cap_mib * MIB
    cases: list[tuple[str, Body]] = [
        ("normal 2 MiB bundle (baseline)", Bytes(small_bundle())),
        ("declared manifest 400 MiB", LyingHead(400 * MIB, cap=cap)),
        ("declared manifest 8 GiB", LyingHead(8**11 - 1, cap=cap)),
    ]
    print(f"code: {args.code or Path(__file__).resolve().parents[1]}; {args.repeat} runs each")
    print(
        "| case | exit | peak RSS MiB (max of runs) | x baseline | requests | bytes sent "
        "| left in updates/ |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, body in cases:
            rows = [fetch_once(body, Path(tmp), args.code) for _ in range(args.repeat)]
            code, _rss, mirror, left = rows[-1]
            peak = max(r[1] for r in rows)
            baseline = baseline or peak
            print(
                f"| {name} | {code} | {peak:.1f} | {peak / baseline:.2f} | "
                f"{len(mirror.requests)} | {mirror.sent:,} | {left} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
