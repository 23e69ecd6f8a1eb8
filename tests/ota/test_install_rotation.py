"""A keyring rotation installed from a bundle is stored with its evidence and trusted at load."""

from __future__ import annotations

import io
from pathlib import Path

from appliance.bundle import Keyring, PayloadSource, TrustedKey, effective_keyring, write_bundle
from appliance.bundle.keychain import CHAIN_PATH
from appliance.bundle.keyring import DATA_KEYRING_PATH
from appliance.ota.installer import install
from tests.bundle.kit import NEXT_KEY, raw_pub
from tools.powercut import CHUNK, PRODUCT, TARGET, Device


def test_installed_rotation_is_authenticated_at_the_next_load(tmp_path: Path) -> None:
    device = Device(tmp_path / "device")
    device.reset()
    baked = tmp_path / "keyring.json"
    baked.write_bytes(device.keyring.to_bytes())
    v2 = Keyring(2, (*device.keyring.keys, TrustedKey.from_public_key(raw_pub(NEXT_KEY))))
    out = io.BytesIO()
    write_bundle(
        out, key=device.key, product=PRODUCT, targets=[TARGET], version="2.0.0",
        security_version=1, created=1_750_000_000, chunk_size=CHUNK,
        payloads=[PayloadSource.keyring(v2.to_bytes()),
                  PayloadSource("rootfs.img", "full", device.v2, "none")],
    )  # fmt: skip
    data = device.root / "data"
    install(io.BytesIO(out.getvalue()), policy=device.policy(), loader=device.loader(),
            booted="A", targets=device.slots, data_dir=data)  # fmt: skip
    assert (data / DATA_KEYRING_PATH).read_bytes() == v2.to_bytes()
    assert (data / CHAIN_PATH).exists()
    trusted = effective_keyring(baked, data)
    assert (trusted.version, trusted.keys) == (2, v2.keys)
