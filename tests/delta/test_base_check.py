"""The base check (``BaseSlot.check``): reads ahead on a helper thread, hashes every byte."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from appliance.bundle.delta import DeltaBaseError
from appliance.bundle.delta_apply import CHECK_BLOCK, BaseSlot

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
