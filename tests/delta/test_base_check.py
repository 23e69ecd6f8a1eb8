"""The base check (reads ahead on a helper thread) and unchanged runs rebuilt in parts."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest

from appliance.bundle import open_bundle
from appliance.bundle.delta import DeltaBaseError
from appliance.bundle.delta_apply import CHECK_BLOCK, PIECE, BaseSlot
from appliance.bundle.errors import ChunkDigestError
from tests.bundle.kit import RecordingSink, policy

from .kit import delta_bundle
from .test_delta_roundtrip import stream

SIZE = 2 * CHECK_BLOCK + 12345  # more than one read buffer's worth, and a partial block


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(5).randbytes(SIZE)
    (tmp_path / "base.img").write_bytes(data + b"slot tail beyond the image")
    return tmp_path / "base.img", data


def test_the_signed_digest_of_the_first_size_bytes_passes(base: tuple[Path, bytes]) -> None:
    path, data = base
    with BaseSlot(path) as slot:
        slot.check(SIZE, hashlib.sha256(data).hexdigest())
        slot.check(SIZE, hashlib.sha256(data).hexdigest())  # once per open slot


@pytest.mark.parametrize("flip", [0, CHECK_BLOCK - 1, CHECK_BLOCK, SIZE - 1])
def test_one_changed_byte_anywhere_is_refused(base: tuple[Path, bytes], flip: int) -> None:
    path, data = base
    changed = bytearray(path.read_bytes())
    changed[flip] ^= 1
    path.write_bytes(changed)
    with BaseSlot(path) as slot, pytest.raises(DeltaBaseError, match="another version"):
        slot.check(SIZE, hashlib.sha256(data).hexdigest())


def test_a_base_shorter_than_signed_is_refused_with_its_length(
    base: tuple[Path, bytes], tmp_path: Path
) -> None:
    _, data = base
    (tmp_path / "short.img").write_bytes(data[: CHECK_BLOCK + 7])
    refused = pytest.raises(DeltaBaseError, match=f"holds {CHECK_BLOCK + 7} bytes")
    with BaseSlot(tmp_path / "short.img") as slot, refused:
        slot.check(SIZE, hashlib.sha256(data).hexdigest())


def test_an_unchanged_run_read_in_parts_is_verified_whole_before_any_part_is_written(
    tmp_path: Path,
) -> None:
    """Unchanged chunks reach the sink in ``PIECE`` parts; the signed digest covers them all.

    The base passes its whole-image check, then one byte in the last part of chunk 1 changes
    (a medium returning other bytes on the second read): chunk 1 is refused and none of its
    parts is written, though the parts before that byte read back as genuine.
    """
    mib = 1 << 20
    data = random.Random(9).randbytes(3 * mib)
    new = b"v2" + data[2:]  # chunk 0 changes; chunks 1 and 2 are unchanged runs
    (tmp_path / "base.img").write_bytes(data)
    (tmp_path / "new.img").write_bytes(new)
    bundle = delta_bundle(tmp_path / "base.img", tmp_path / "new.img", chunk_size=mib)

    good = RecordingSink()
    stream(bundle, tmp_path / "base.img", good)
    assert good.image() == new
    unchanged = [d for offset, d in good.writes if offset >= mib]
    assert len(unchanged) == 2 * mib // PIECE  # parts, not chunk-sized buffers

    verified = open_bundle(io.BytesIO(bundle), policy())
    payload = verified.manifest.payloads[0]
    bad = RecordingSink(armed=True)
    with BaseSlot(tmp_path / "base.img") as slot:
        assert payload.base is not None
        slot.check(payload.base.size, payload.base.sha256)  # the genuine base passes
        with open(tmp_path / "base.img", "r+b") as f:  # then reads back other bytes
            f.seek(2 * mib - 1)
            f.write(bytes([data[2 * mib - 1] ^ 1]))
        with pytest.raises(ChunkDigestError, match="chunk 1 rebuilds"):
            verified.stream_payload(payload.name, bad, base=slot)
    assert bad.writes and all(offset < mib for offset, _ in bad.writes)  # chunk 0 only
    assert bad.image() == new[:mib]
