#!/usr/bin/env python3
"""Fuzz the bundle reader: mutate valid bundles and check that none is accepted.

Mutations: single and multiple bit flips, truncations, splices of two valid bundles, inserted
junk, and byte overwrites. For every case the reader runs to the end through an oracle sink
that counts bytes arriving before the manifest was verified and bytes that are not the genuine
image. Prints counts per mutation and per error; exits 1 if any mutated bundle was accepted
or any unverified byte reached the sink.

    .venv/bin/python tools/fuzz_bundle.py                 # 12,000 cases, seed 1
    .venv/bin/python tools/fuzz_bundle.py -n 50000 --seed 7
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.bundle import mutate
from tests.bundle.kit import CHUNK, image_bytes, make_bundle, policy, trusted_keyring


def main() -> int:  # noqa: PLR0912 - one branch per mutation kind
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", "--cases", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    images = {"a": image_bytes(CHUNK * 3 + 123, seed=1), "b": image_bytes(CHUNK * 2 + 7, seed=2)}
    valid = {
        "a-none": (make_bundle(images["a"]), images["a"]),
        "a-zstd": (make_bundle(images["a"], compression="zstd"), images["a"]),
        "b-none": (make_bundle(images["b"], version="2.0.0"), images["b"]),
        "b-zstd-keyring": (
            make_bundle(
                images["b"], compression="zstd", keyring_payload=trusted_keyring(2).to_bytes()
            ),
            images["b"],
        ),
    }
    by_bytes = {data: genuine for data, genuine in valid.values()}
    pol = policy()
    for name, (data, genuine) in valid.items():
        if not mutate.read(data, genuine, pol).accepted:
            print(f"valid bundle {name} was refused: the fuzzer is broken", file=sys.stderr)
            return 2

    kinds = Counter[str]()
    errors = Counter[str]()
    accepted = early = unverified = identical = 0
    start = time.perf_counter()
    names = sorted(valid)
    for _ in range(args.cases):
        base = rng.choice(names)
        data, genuine = valid[base]
        kind = rng.choice(["flip", "multiflip", "truncate", "splice", "insert", "overwrite"])
        if kind == "flip":
            out = mutate.flip(data, rng.randrange(len(data) * 8))
        elif kind == "multiflip":
            out = data
            for _ in range(rng.randint(2, 16)):
                out = mutate.flip(out, rng.randrange(len(data) * 8))
        elif kind == "truncate":
            out = mutate.truncate(data, rng.randrange(len(data)))
        elif kind == "splice":
            other = valid[rng.choice(names)][0]
            out = mutate.splice(
                data, other, rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
            )
        elif kind == "insert":
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 1024)))
            out = mutate.insert(data, rng.randrange(len(data) + 1), junk)
        else:
            at = rng.randrange(len(data))
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            out = data[:at] + junk + data[at + len(junk) :]
        kinds[kind] += 1
        if out in by_bytes:  # a splice or overwrite can reproduce a valid bundle exactly
            identical += 1
            genuine = by_bytes[out]
        result = mutate.read(out, genuine, pol)
        early += result.early_writes
        unverified += result.unverified_writes
        if result.accepted and out not in by_bytes:
            accepted += 1
        errors[result.error or "accepted (identical to a valid bundle)"] += 1
    elapsed = time.perf_counter() - start

    print(f"{args.cases} mutated bundles (seed {args.seed}) in {elapsed:.1f} s")
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print("outcomes:")
    for name, count in errors.most_common():
        print(f"  {count:7d}  {name}")
    print(f"identical to a valid bundle (not mutations): {identical}")
    print(f"ACCEPTED mutations: {accepted}")
    print(f"writes before verification: {early}")
    print(f"unverified bytes written: {unverified}")
    return 1 if accepted or early or unverified else 0


if __name__ == "__main__":
    sys.exit(main())
