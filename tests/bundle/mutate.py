"""Mutations of valid bundles (bit flips, truncations, splices) and the acceptance oracle.

Shared by the hypothesis test (tests/bundle/test_mutations.py) and tools/fuzz_bundle.py.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from appliance.bundle import BundleError, MemorySink, Policy, open_bundle


@dataclass
class Outcome:
    """What reading one mutated bundle did."""

    accepted: bool
    error: str | None
    early_writes: int  # writes before open_bundle returned (must be 0)
    unverified_writes: int  # writes whose bytes differ from the genuine image (must be 0)


class OracleSink:
    """Counts writes before arming and writes whose bytes are not the genuine image's."""

    def __init__(self, genuine: bytes) -> None:
        self.genuine = genuine
        self.armed = False
        self.early = 0
        self.unverified = 0
        self.image = MemorySink(len(genuine) + (1 << 20))

    def write(self, offset: int, data: bytes) -> None:
        if not self.armed:
            self.early += 1
        if data != self.genuine[offset : offset + len(data)]:
            self.unverified += 1
        self.image.write(offset, data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def read(data: bytes, genuine: bytes, policy: Policy) -> Outcome:
    """Read ``data`` completely through an oracle sink."""
    sink = OracleSink(genuine)
    try:
        verified = open_bundle(io.BytesIO(data), policy)
        sink.armed = True
        for p in verified.manifest.payloads:
            verified.stream_payload(p.name, sink if p.kind == "full" else MemorySink(1 << 20))
        verified.finish()
    except BundleError as exc:
        return Outcome(False, type(exc).__name__, sink.early, sink.unverified)
    return Outcome(True, None, sink.early, sink.unverified)


def flip(data: bytes, bit_index: int) -> bytes:
    """Flip one bit (index modulo the bundle's bit length)."""
    out = bytearray(data)
    i = bit_index % (len(data) * 8)
    out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


def truncate(data: bytes, length: int) -> bytes:
    """Keep a strict prefix."""
    return data[: length % len(data)]


def splice(a: bytes, b: bytes, cut_a: int, cut_b: int) -> bytes:
    """a's head up to cut_a, then b's tail from cut_b."""
    return a[: cut_a % (len(a) + 1)] + b[cut_b % (len(b) + 1) :]


def insert(data: bytes, at: int, junk: bytes) -> bytes:
    """Insert bytes at a position."""
    i = at % (len(data) + 1)
    return data[:i] + junk + data[i:]
