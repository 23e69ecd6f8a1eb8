"""The base check on a helper thread (``BaseSlot.start_check``) while the delta is applied.

Every chunk written meanwhile is verified against its own signed digest; the stream returns
only once the whole base matched its signed sha256, and a wrong base is refused as such
(``DeltaBaseError``), also when one of its chunks failed its digest first (docs/decisions.md §34).
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.bundle import open_bundle
from appliance.bundle.delta import DeltaBaseError
from appliance.bundle.delta_apply import BaseSlot
from appliance.bundle.errors import BundleError, TruncatedBundleError
from tests.bundle.kit import RecordingSink, manifest_of, policy

from .kit import CHUNK, delta_bundle, write_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes]:
    tmp = tmp_path_factory.mktemp("overlap")
    base, new = write_pair(tmp)
    return base, new.read_bytes(), delta_bundle(base, new)


def overlapped(bundle: bytes, base: Path, sink: RecordingSink) -> None:
    """Stream the delta as the installer does on a multi-core device: check started first."""
    verified = open_bundle(io.BytesIO(bundle), policy())
    payload = verified.manifest.payloads[0]
    assert payload.base is not None
    sink.armed = True
    with BaseSlot(base) as slot:
        slot.start_check(payload.base.size, payload.base.sha256)
        assert slot.checking(payload.base.size, payload.base.sha256)
        verified.stream_payload(payload.name, sink, base=slot)
        assert not slot.checking(payload.base.size, payload.base.sha256)
    verified.finish()


def only_verified_chunks(sink: RecordingSink, new: bytes) -> None:
    """Every write is a whole chunk of the signed new image, at its place, in order."""
    assert not sink.early
    for k, (offset, data) in enumerate(sink.writes):
        assert offset == k * CHUNK
        assert data == new[offset : offset + CHUNK]


def test_the_right_base_rebuilds_the_image(pair: tuple[Path, bytes, bytes]) -> None:
    base, new, bundle = pair
    sink = RecordingSink()
    overlapped(bundle, base, sink)
    assert sink.image() == new
    assert sink.flushes == 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_one_flipped_bit_in_the_base_is_refused_as_a_wrong_base(
    pair: tuple[Path, bytes, bytes], tmp_path: Path, where: float, bit: int
) -> None:
    base, new, bundle = pair
    data = bytearray(base.read_bytes())
    data[int(where * len(data))] ^= 1 << bit
    other = tmp_path / "flipped.img"
    other.write_bytes(bytes(data))
    sink = RecordingSink()
    with pytest.raises(DeltaBaseError, match="install the full bundle"):
        overlapped(bundle, other, sink)
    only_verified_chunks(sink, new)


def test_another_version_is_refused_as_a_wrong_base_not_as_a_bad_chunk(
    pair: tuple[Path, bytes, bytes], tmp_path: Path
) -> None:
    """The new image as the base: its chunks rebuild wrong, the error names the base."""
    _, new, bundle = pair
    other = tmp_path / "other.img"
    other.write_bytes(new)
    sink = RecordingSink()
    with pytest.raises(DeltaBaseError, match="another version") as refused:
        overlapped(bundle, other, sink)
    assert isinstance(refused.value.__context__, BundleError)  # a chunk failed first
    only_verified_chunks(sink, new)


def test_a_short_base_is_refused_with_its_length(
    pair: tuple[Path, bytes, bytes], tmp_path: Path
) -> None:
    base, new, bundle = pair
    short = tmp_path / "short.img"
    short.write_bytes(base.read_bytes()[: 3 * CHUNK + 5])
    sink = RecordingSink()
    with pytest.raises(DeltaBaseError, match=f"holds {3 * CHUNK + 5} bytes"):
        overlapped(bundle, short, sink)
    only_verified_chunks(sink, new)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.99])
def test_a_truncated_delta_on_the_right_base_is_refused_as_truncated(
    pair: tuple[Path, bytes, bytes], cut: float
) -> None:
    base, new, bundle = pair
    start = len(bundle) - manifest_of(bundle)["payloads"][0]["size"] - 1024
    short = bundle[: start + int(cut * (len(bundle) - start))]
    sink = RecordingSink()
    with pytest.raises(TruncatedBundleError):
        overlapped(short, base, sink)
    only_verified_chunks(sink, new)


def test_a_truncated_delta_on_a_wrong_base_is_refused_as_a_wrong_base(
    pair: tuple[Path, bytes, bytes], tmp_path: Path
) -> None:
    base, new, bundle = pair
    data = bytearray(base.read_bytes())
    data[-1] ^= 0xFF  # the last byte: every chunk may rebuild right, the check alone sees it
    other = tmp_path / "other.img"
    other.write_bytes(bytes(data))
    sink = RecordingSink()
    with pytest.raises(DeltaBaseError, match="another version"):
        overlapped(bundle[: len(bundle) - 3000], other, sink)
    only_verified_chunks(sink, new)


def test_closing_the_slot_stops_a_running_check(pair: tuple[Path, bytes, bytes]) -> None:
    base, _, bundle = pair
    payload = manifest_of(bundle)["payloads"][0]["base"]
    before = {t.name for t in threading.enumerate()}
    with BaseSlot(base) as slot:
        slot.start_check(payload["size"], payload["sha256"])
    assert "base-check" not in {t.name for t in threading.enumerate()} - before
    with BaseSlot(base) as slot:  # and a started check answers a plain check()
        slot.start_check(payload["size"], payload["sha256"])
        slot.check(payload["size"], payload["sha256"])
        assert not slot.checking(payload["size"], payload["sha256"])
