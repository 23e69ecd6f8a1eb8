"""Power cuts during a delta install (the base checked while verified chunks are written).

The harness of ``tests/ota/test_powercut.py`` (a simulated volatile write cache, the real loader
logic deciding what boots), with v2 delivered as a delta against the v1 in slot A. On more than
one CPU the installer writes rebuilt, verified chunks while the base is still being hashed
(docs/decisions.md §34): a cut anywhere must still boot a signed slot, and the next install must
succeed.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle import PayloadSource, write_bundle
from tools.powercut import CHUNK, IMAGE_SIZE, PRODUCT, STATE_POINTS, TARGET, Device, one_run

BEFORE_TRY = STATE_POINTS[: STATE_POINTS.index("env-2")]  # later cuts may boot v2 itself


@dataclass(frozen=True)
class DeltaV2:
    key: Ed25519PrivateKey
    image: bytes
    bundle: bytes
    sha256: str


@pytest.fixture(scope="module")
def delta_v2(tmp_path_factory: pytest.TempPathFactory) -> DeltaV2:
    """v2 as a delta from the harness's v1 (a few changed stretches), encoded once."""
    root = tmp_path_factory.mktemp("delta-powercut")
    key = Ed25519PrivateKey.generate()
    v1 = Device(root / "probe", key=key).v1
    new = bytearray(v1)
    new[5000:9000] = random.Random(3).randbytes(4000)
    new[IMAGE_SIZE // 2 : IMAGE_SIZE // 2 + 64] = bytes(64)
    (root / "v1.img").write_bytes(v1)
    (root / "v2.img").write_bytes(new)
    out = io.BytesIO()
    manifest = write_bundle(
        out,
        key=key,
        product=PRODUCT,
        targets=[TARGET],
        version="2.0.0",
        security_version=1,
        created=1_750_000_000,
        chunk_size=CHUNK,
        payloads=[PayloadSource.delta(root / "v2.img", root / "v1.img")],
    )
    assert manifest.payloads[0].kind == "delta"
    return DeltaV2(key, bytes(new), out.getvalue(), manifest.payloads[0].image.sha256)


def delta_device(root: Path, direct: bool, v2: DeltaV2) -> Device:
    """A harness device whose v2 bundle is the delta."""
    device = Device(root / "device", "grub", direct, key=v2.key)
    device.v2, device.bundle_v2 = v2.image, v2.bundle
    device.signed[v2.sha256] = "2.0.0"
    return device


CUTS = [
    *((point, True) for point in BEFORE_TRY),  # the installer's steps (its O_DIRECT path)
    *((offset, direct) for offset in (0, 1, 20_000, IMAGE_SIZE // 2, IMAGE_SIZE - 1)
      for direct in (True, False)),  # inside the slot's writes, both write paths
]  # fmt: skip


@pytest.mark.parametrize(("cut", "direct"), CUTS)
def test_a_cut_during_a_delta_install_boots_a_signed_slot_and_rerun_installs(
    tmp_path: Path, cut: str | int, direct: bool, delta_v2: DeltaV2
) -> None:
    device = delta_device(tmp_path, direct, delta_v2)
    point, bootable, rerun_ok = one_run(device, random.Random(str(cut)), cut)
    assert point == str(cut)
    assert bootable and rerun_ok


@pytest.mark.parametrize("cut", ["env-2", "tried"])
def test_a_cut_as_the_delta_slot_is_tried_boots_a_signed_slot(
    tmp_path: Path, cut: str, delta_v2: DeltaV2
) -> None:
    device = delta_device(tmp_path, True, delta_v2)
    _, bootable, _ = one_run(device, random.Random(cut), cut)
    assert bootable  # (v2 may boot: a rerun of the same delta then has the wrong base)
