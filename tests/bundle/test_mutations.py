"""Property: no mutation of a valid bundle is accepted, and no unverified byte reaches the sink."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import mutate
from .kit import CHUNK, image_bytes, make_bundle, policy, trusted_keyring

IMAGE_A = image_bytes(CHUNK * 2 + 300, seed=1)
IMAGE_B = image_bytes(CHUNK * 2 + 300, seed=2)
VALID = {
    "a-none": make_bundle(IMAGE_A),
    "a-zstd": make_bundle(IMAGE_A, compression="zstd"),
    "b-none": make_bundle(IMAGE_B, version="1.2.4"),
    "a-keyring": make_bundle(IMAGE_A, keyring_payload=trusted_keyring(2).to_bytes()),
}
GENUINE = {"a-none": IMAGE_A, "a-zstd": IMAGE_A, "b-none": IMAGE_B, "a-keyring": IMAGE_A}
POLICY = policy()
NAMES = sorted(VALID)


def _check(data: bytes, base: str) -> None:
    same = [name for name, valid in VALID.items() if valid == data]
    outcome = mutate.read(data, GENUINE[same[0] if same else base], POLICY)
    assert outcome.early_writes == 0, "bytes reached the sink before the manifest was verified"
    assert outcome.unverified_writes == 0, "unverified bytes reached the sink"
    if same:
        return  # a splice can rebuild a valid bundle byte for byte
    assert not outcome.accepted, "a mutated bundle was accepted"


def test_originals_are_accepted() -> None:
    for name, data in VALID.items():
        assert mutate.read(data, GENUINE[name], POLICY).accepted


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(min_value=0), st.integers(min_value=0)),
    st.tuples(st.just("truncate"), st.integers(min_value=0), st.integers(min_value=0)),
    st.tuples(st.just("splice"), st.integers(min_value=0), st.integers(min_value=0)),
    st.tuples(st.just("insert"), st.integers(min_value=0), st.integers(min_value=0)),
    st.tuples(st.just("multiflip"), st.integers(min_value=0), st.integers(min_value=0)),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(NAMES),
    other=st.sampled_from(NAMES),
    op=mutation,
    junk=st.binary(min_size=1, max_size=600),
)
def test_mutated_bundles_are_refused(
    base: str, other: str, op: tuple[str, int, int], junk: bytes
) -> None:
    data = VALID[base]
    kind, x, y = op
    if kind == "flip":
        mutated = mutate.flip(data, x)
    elif kind == "multiflip":
        mutated = mutate.flip(mutate.flip(mutate.flip(data, x), y), x * 7 + y + 1)
        if mutated == data:
            return
    elif kind == "truncate":
        mutated = mutate.truncate(data, x)
    elif kind == "splice":
        mutated = mutate.splice(data, VALID[other], x, y)
    else:
        mutated = mutate.insert(data, x, junk)
    _check(mutated, base)
