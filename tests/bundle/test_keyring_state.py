"""Keyrings (ids, revocation, rotation through a signed bundle) and the anti-rollback state."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from appliance.bundle import (
    Keyring,
    Rotation,
    apply_keyring_update,
    effective_keyring,
    errors,
    open_bundle,
)
from appliance.bundle.keyring import DATA_KEYRING_PATH, TrustedKey
from appliance.state import (
    SlotRecord,
    StateError,
    load_state,
    record_committed,
    record_installed,
    record_rolled_back,
    security_floor,
    state_path,
)

from .kit import KEY, NEXT_KEY, make_bundle, policy, raw_pub, read_all, trusted_keyring


def test_keyring_round_trips_and_ids_match() -> None:
    ring = trusted_keyring()
    again = Keyring.from_bytes(ring.to_bytes())
    assert again == Keyring(version=ring.version, keys=ring.keys, source="keyring")
    assert all(len(k.id) == 16 for k in ring.keys)


def test_keyring_with_wrong_id_is_refused() -> None:
    data = trusted_keyring().to_bytes()
    good_id = trusted_keyring().keys[0].id
    with pytest.raises(errors.KeyringError, match="does not match"):
        Keyring.from_bytes(data.replace(good_id.encode(), b"0" * 16))


def test_keyring_with_duplicate_json_key_is_refused() -> None:
    data = trusted_keyring().to_bytes()
    with pytest.raises(errors.KeyringError, match="duplicate"):
        Keyring.from_bytes(data[:-1] + b',"version":9}')


def test_rotation_through_a_signed_bundle(tmp_path: Path) -> None:
    baked = tmp_path / "keyring.json"
    baked.write_bytes(trusted_keyring(1).to_bytes())
    data_dir = tmp_path / "data"
    current = effective_keyring(baked, data_dir)
    # Version 2 trusts NEXT_KEY and revokes KEY; it travels in a bundle signed by KEY.
    old = trusted_keyring(1)
    keys = tuple(
        TrustedKey(k.id, k.public_key, revoked=True) if k.id == old.keys[0].id else k
        for k in old.keys
    )
    new = Keyring(version=2, keys=(*keys, TrustedKey.from_public_key(raw_pub(NEXT_KEY))))
    bundle = make_bundle(keyring_payload=new.to_bytes())
    verified = open_bundle(io.BytesIO(bundle), policy(keyring=current))
    data = verified.read_keyring()
    rotation = Rotation(data, verified.manifest_bytes, verified.signature)
    rotated = apply_keyring_update(current, data, data_dir, rotation)
    verified.finish()
    assert (data_dir / DATA_KEYRING_PATH).read_bytes() == new.to_bytes()
    assert effective_keyring(baked, data_dir).version == 2
    # Now bundles by the revoked key are refused; bundles by the new key are accepted.
    with pytest.raises(errors.RevokedKeyError):
        read_all(make_bundle(key=KEY), policy(keyring=rotated))
    read_all(make_bundle(key=NEXT_KEY), policy(keyring=rotated))
    # Replaying the older keyring, or un-revoking, is refused (even signed by a trusted key).
    with pytest.raises(errors.KeyringRollbackError):
        apply_keyring_update(rotated, old.to_bytes(), data_dir, _rotation(old.to_bytes()))
    unrevoke = Keyring(version=3, keys=(*old.keys, TrustedKey.from_public_key(raw_pub(NEXT_KEY))))
    with pytest.raises(errors.KeyringRollbackError, match="un-revokes"):
        apply_keyring_update(rotated, unrevoke.to_bytes(), data_dir, _rotation(unrevoke.to_bytes()))


def _rotation(ring: bytes) -> Rotation:
    """The evidence of a bundle signed by NEXT_KEY that carries ``ring``."""
    verified = open_bundle(
        io.BytesIO(make_bundle(key=NEXT_KEY, keyring_payload=ring)),
        policy(keyring=Keyring(1, (TrustedKey.from_public_key(raw_pub(NEXT_KEY)),))),
    )
    return Rotation(ring, verified.manifest_bytes, verified.signature)


def test_key_not_after_is_enforced_on_trusted_time() -> None:
    ring = Keyring(
        version=1,
        keys=(TrustedKey(trusted_keyring().keys[0].id, raw_pub(KEY), not_after=2_000_000_000),),
    )
    bundle = make_bundle()
    read_all(bundle, policy(keyring=ring))  # untrusted clock: only creation time counts
    with pytest.raises(errors.KeyExpiredError):
        read_all(bundle, policy(keyring=ring, trusted_now=2_000_000_001))


def test_expiry_needs_a_trusted_clock() -> None:
    bundle = make_bundle(expires=1_750_000_100)
    read_all(bundle, policy(trusted_now=None))
    read_all(bundle, policy(trusted_now=1_750_000_050))
    with pytest.raises(errors.BundleExpiredError):
        read_all(bundle, policy(trusted_now=1_750_000_101))


def test_floor_rises_only_on_commit(tmp_path: Path) -> None:
    assert security_floor(tmp_path) == 0
    record_installed(tmp_path, SlotRecord("b", "2.0.0", 7))
    assert security_floor(tmp_path) == 0  # installed but not committed: no floor yet
    record_rolled_back(tmp_path)
    assert load_state(tmp_path).installed is None
    record_installed(tmp_path, SlotRecord("b", "2.0.1", 6))
    state = record_committed(tmp_path, SlotRecord("b", "2.0.1", 6))
    assert state.security_floor == 6 and state.installed is None
    record_committed(tmp_path, SlotRecord("a", "2.0.2", 3))  # never lowers
    assert security_floor(tmp_path) == 6
    with pytest.raises(errors.RollbackError):
        read_all(
            make_bundle(security_version=5), policy(min_security_version=security_floor(tmp_path))
        )


def test_damaged_state_is_an_error_not_a_reset(tmp_path: Path) -> None:
    record_committed(tmp_path, SlotRecord("a", "1.0.0", 4))
    state_path(tmp_path).write_bytes(b'{"format":1,"security_floor":"x"}')
    with pytest.raises(StateError, match="damaged"):
        security_floor(tmp_path)


def test_state_write_is_atomic(tmp_path: Path) -> None:
    record_committed(tmp_path, SlotRecord("a", "1.0.0", 4))
    names = sorted(p.name for p in tmp_path.iterdir())  # no temp file left behind
    assert names == ["slot-records-v1.json", state_path(tmp_path).name]


def test_manifest_must_name_the_key_that_signed_it() -> None:
    from .kit import resign

    both = Keyring(
        version=1, keys=(*trusted_keyring().keys, TrustedKey.from_public_key(raw_pub(NEXT_KEY)))
    )
    # Signed by NEXT_KEY (trusted) while the manifest names KEY (also trusted).
    forged = resign(make_bundle(key=KEY), lambda m: None, key=NEXT_KEY)
    with pytest.raises(errors.SignatureInvalidError, match="names key"):
        read_all(forged, policy(keyring=both))


def test_bake_keyring_into_a_root_tree(tmp_path: Path) -> None:
    from appliance.bundle.keyring import DEVICE_KEYRING
    from image.release.keys import KeyFileError, bake_keyring

    src = tmp_path / "ring.json"
    src.write_bytes(trusted_keyring(3).to_bytes())
    target = bake_keyring(src, tmp_path / "root")
    assert target == tmp_path / "root" / DEVICE_KEYRING.relative_to("/")
    assert effective_keyring(target, tmp_path / "data").version == 3
    src.write_bytes(src.read_bytes().replace(b'"version":3', b'"version": 3'))
    with pytest.raises(KeyFileError, match="not canonical"):
        bake_keyring(src, tmp_path / "root")
