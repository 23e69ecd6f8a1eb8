#!/usr/bin/env python3
"""Fuzz the bundle reader and the download path with mutations and the attacks of issue #17.

Cases (tests/bundle/attacks.py): half classic mutations of valid bundles (bit flips,
truncations, splices, inserted junk, overwrites), half attacks: lying tar heads (declared
manifests above the limit up to 8 GiB), traversal and link headers, forged rotated keyrings on
the data partition, keyring-rotation abuse inside signed bundles, delta control bombs, and
downloads from a lying mirror. Prints counts per kind and per error; exits 1 if any case was
accepted, any byte reached the target before verification or was not the genuine image, a
refused download left a file, or a request asked for more than the manifest limit before the
signature was checked.

    .venv/bin/python tools/fuzz_bundle.py                 # 10,000 cases, seed 1
    .venv/bin/python tools/fuzz_bundle.py -n 50000 --seed 7
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bundle.attacks import Fuzzer, Outcome


@dataclass
class Summary:
    """Totals of a run."""

    cases: int = 0
    accepted: int = 0
    early: int = 0
    unverified: int = 0
    leftover: int = 0
    over_asked: int = 0
    written: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, out: Outcome, head_limit: int) -> None:
        self.cases += 1
        self.kinds[out.kind] += 1
        what = out.error or ("ACCEPTED" if out.accepted else "the genuine bundle (kept as is)")
        self.errors[f"{out.kind}: {what}"] += 1
        self.accepted += out.accepted
        self.early += out.early
        self.unverified += out.unverified
        self.leftover += out.leftover
        self.over_asked += out.asked > head_limit
        self.written[out.kind] += out.written

    @property
    def ok(self) -> bool:
        return not (self.accepted or self.early or self.unverified or self.leftover
                    or self.over_asked)  # fmt: skip


def run(cases: int, seed: int, work: Path) -> Summary:
    """``cases`` random cases from ``seed``; the fuzzer's files live under ``work``."""
    fuzzer = Fuzzer(work)
    head_limit = 512 + fuzzer.limit + 511 + 1024
    rng = random.Random(seed)
    summary = Summary()
    for _ in range(cases):
        summary.add(fuzzer.case(rng), head_limit)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    logging.getLogger("appliance").setLevel(logging.CRITICAL)  # refusals are counted, not logged
    shm = Path("/dev/shm")  # noqa: S108 - a private TemporaryDirectory inside it
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        start = time.perf_counter()
        s = run(args.cases, args.seed, Path(tmp))
        elapsed = time.perf_counter() - start
    print(f"{s.cases} cases (seed {args.seed}) in {elapsed:.1f} s")
    print("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items())))
    print("outcomes:")
    for name, count in sorted(s.errors.items()):
        print(f"  {count:7d}  {name}")
    print("bytes written to the target (all verified genuine prefixes of refused streams):")
    for kind, total in sorted(s.written.items()):
        print(f"  {total:10d}  {kind}")
    print(f"ACCEPTED: {s.accepted}")
    print(f"writes before verification: {s.early}")
    print(f"unverified bytes written: {s.unverified}")
    print(f"files left by refused downloads: {s.leftover}")
    print(f"head requests above the manifest limit: {s.over_asked}")
    return 0 if s.ok else 1


if __name__ == "__main__":
    sys.exit(main())
