"""Hypothesis: mutated delta chunks never crash the applier and never rebuild unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.bundle.delta import DeltaBaseError, DeltaError
from appliance.bundle.delta_apply import BaseSlot
from appliance.bundle.delta_encode import BaseIndex, DeltaEncoder

from .kit import CHUNK, image_pair


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[bytes, bytes]]]:
    base, new = image_pair(seed=3)
    path = tmp_path_factory.mktemp("mut") / "base.img"
    path.write_bytes(base)
    encoder = DeltaEncoder(BaseIndex(base, BaseIndex.load(path).blocks), CHUNK, level=3)
    chunks = [new[i : i + CHUNK] for i in range(0, len(new), CHUNK)]
    return path, [(c, encoder.encode(i, c)) for i, c in enumerate(chunks)]


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 30), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.integers(0, 255)),
    st.tuples(st.just("set32"), st.integers(0, 1 << 30), st.integers(0, 0xFFFFFFFF)),
)


def mutate(wire: bytes, op: tuple[str, int, int]) -> bytes:
    kind, at, value = op
    if not wire:
        return bytes([value & 0xFF])
    at %= len(wire)
    if kind == "flip":
        return wire[:at] + bytes([wire[at] ^ (1 << value)]) + wire[at + 1 :]
    if kind == "cut":
        return wire[:at]
    if kind == "insert":
        return wire[:at] + bytes([value]) + wire[at:]
    return wire[:at] + value.to_bytes(4, "little") + wire[at + 4 :]


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(index=st.integers(0, 100), ops=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_delta_chunks_are_refused_or_caught_by_the_digest(
    encoded: tuple[Path, list[tuple[bytes, bytes]]], index: int, ops: list[tuple[str, int, int]]
) -> None:
    base, chunks = encoded
    chunk, wire = chunks[index % len(chunks)]
    bad = wire
    for op in ops:
        bad = mutate(bad, op)
    with BaseSlot(base) as slot:
        try:
            out = slot.rebuild(bad, len(chunk), base.stat().st_size, "mutated")
        except (DeltaError, DeltaBaseError):
            return
    # Structurally valid: exactly one chunk's worth of bytes, and the reader's image digest
    # decides (a mutation may even be harmless, e.g. a seek past the last control).
    assert len(out) == len(chunk)
