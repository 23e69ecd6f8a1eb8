"""#17 vuln 4: a rotated keyring on data is trusted only through a signature chain from the baked
keyring, and revocations never come undone (not even by a newer baked keyring).

Before, any ``keys/keyring-v1.json`` with a higher version on data replaced the baked keyring:
whoever could write the data partition (an offline disk, a stick with a colliding PARTLABEL)
installed their own code at the next update.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from appliance.bundle import (
    Keyring,
    Rotation,
    TrustedKey,
    apply_keyring_update,
    effective_keyring,
    errors,
    open_bundle,
)
from appliance.bundle.keyring import DATA_KEYRING_PATH

from .kit import KEY, NEXT_KEY, STRANGER_KEY, fixed_key, make_bundle, policy, raw_pub, read_all

ATTACKER = STRANGER_KEY
THIRD_KEY = fixed_key("edgekiln test release key F (second rotation)")


def ring(version: int, *keys: TrustedKey) -> Keyring:
    return Keyring(version, keys)


def usable(key: object) -> TrustedKey:
    return TrustedKey.from_public_key(raw_pub(key))  # type: ignore[arg-type]


def revoked(key: object) -> TrustedKey:
    t = usable(key)
    return TrustedKey(t.id, t.public_key, revoked=True)


def baked_file(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "slot" / "keyring.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(keyring.to_bytes())
    return path


def rotate(current: Keyring, new: Keyring, signer: object, data_dir: Path) -> Keyring:
    """What the installer does with a verified rotation bundle signed by ``signer``."""
    bundle = make_bundle(key=signer, keyring_payload=new.to_bytes())  # type: ignore[arg-type]
    verified = open_bundle(io.BytesIO(bundle), policy(keyring=current))
    data = verified.read_keyring()
    return apply_keyring_update(
        current, data, data_dir, Rotation(data, verified.manifest_bytes, verified.signature)
    )


def snapshot(data_dir: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file()}


def test_forged_higher_version_keyring_on_data_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    baked = baked_file(tmp_path, ring(1, usable(KEY)))
    data_dir = tmp_path / "data"
    forged = ring(9, usable(KEY), usable(ATTACKER))
    (data_dir / DATA_KEYRING_PATH).parent.mkdir(parents=True)
    (data_dir / DATA_KEYRING_PATH).write_bytes(forged.to_bytes())
    before = snapshot(data_dir)
    with caplog.at_level(logging.ERROR):
        trusted = effective_keyring(baked, data_dir)
    assert (trusted.version, trusted.keys) == (1, (usable(KEY),))  # the baked keyring
    message = caplog.records[-1].getMessage()
    assert "rotated keyring refused" in message
    assert "(version 9) is not reached by a signature chain from the baked keyring" in message
    with pytest.raises(errors.UnknownKeyError):  # the attacker's bundle installs nothing
        read_all(make_bundle(key=ATTACKER), policy(keyring=trusted))
    assert snapshot(data_dir) == before  # nothing on data was changed by the load


def test_forged_chain_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The attacker also writes rotation evidence: a bundle signed by their own key."""
    baked = baked_file(tmp_path, ring(1, usable(KEY)))
    data_dir = tmp_path / "data"
    attacker_ring = ring(1, usable(ATTACKER))
    rotate(attacker_ring, ring(2, usable(KEY), usable(ATTACKER)), ATTACKER, data_dir)
    with caplog.at_level(logging.ERROR):
        trusted = effective_keyring(baked, data_dir)
    assert (trusted.version, trusted.keys) == (1, (usable(KEY),))
    assert "is not signed by any key of" in caplog.records[-1].getMessage()


def test_keyring_swapped_after_a_genuine_rotation_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    baked = baked_file(tmp_path, ring(1, usable(KEY)))
    data_dir = tmp_path / "data"
    genuine = ring(2, usable(KEY), usable(NEXT_KEY))
    rotate(ring(1, usable(KEY)), genuine, KEY, data_dir)
    (data_dir / DATA_KEYRING_PATH).write_bytes(ring(3, usable(KEY), usable(ATTACKER)).to_bytes())
    with caplog.at_level(logging.ERROR):
        trusted = effective_keyring(baked, data_dir)
    assert (trusted.version, trusted.keys) == (2, genuine.keys)  # the last authenticated link
    assert "(version 3) is not reached by a signature chain" in caplog.records[-1].getMessage()


def test_a_valid_rotation_chain_is_accepted(tmp_path: Path) -> None:
    baked = baked_file(tmp_path, ring(1, usable(KEY)))
    data_dir = tmp_path / "data"
    v2 = rotate(effective_keyring(baked, data_dir), ring(2, usable(KEY), usable(NEXT_KEY)), KEY,
                data_dir)  # fmt: skip
    v3 = ring(3, revoked(KEY), usable(NEXT_KEY), usable(THIRD_KEY))
    rotate(v2, v3, NEXT_KEY, data_dir)  # signed by a key only v2 trusts
    trusted = effective_keyring(baked, data_dir)
    assert (trusted.version, trusted.keys, trusted.source) == (
        3, v3.keys, str(data_dir / DATA_KEYRING_PATH)
    )  # fmt: skip
    read_all(make_bundle(key=THIRD_KEY), policy(keyring=trusted))
    # A slot that bakes v2 (a newer release) still reaches v3 through the chain.
    newer_slot = baked_file(tmp_path / "b", ring(2, usable(KEY), usable(NEXT_KEY)))
    assert effective_keyring(newer_slot, data_dir).version == 3


def test_revocation_on_data_survives_a_newer_baked_keyring(tmp_path: Path) -> None:
    baked = baked_file(tmp_path, ring(1, usable(KEY)))
    data_dir = tmp_path / "data"
    rotate(ring(1, usable(KEY)), ring(2, revoked(KEY), usable(NEXT_KEY)), KEY, data_dir)
    # The next release bakes a keyring that (wrongly) lists KEY as usable again.
    newer = baked_file(tmp_path / "b", ring(5, usable(KEY), usable(NEXT_KEY)))
    trusted = effective_keyring(newer, data_dir)
    assert trusted.version == 5
    assert {k.id: k.revoked for k in trusted.keys} == {usable(KEY).id: True,
                                                       usable(NEXT_KEY).id: False}  # fmt: skip
    with pytest.raises(errors.RevokedKeyError):
        read_all(make_bundle(key=KEY), policy(keyring=trusted))
    read_all(make_bundle(key=NEXT_KEY), policy(keyring=trusted))
    assert effective_keyring(baked, data_dir).version == 2  # and the old slot keeps v2


def test_rotation_evidence_for_other_bytes_is_refused_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    current = ring(1, usable(KEY))
    data_dir = tmp_path / "data"
    bundle = make_bundle(key=KEY, keyring_payload=ring(2, usable(KEY)).to_bytes())
    verified = open_bundle(io.BytesIO(bundle), policy(keyring=current))
    evidence = Rotation(verified.read_keyring(), verified.manifest_bytes, verified.signature)
    other = ring(2, usable(KEY), usable(ATTACKER)).to_bytes()
    with pytest.raises(errors.KeyringError, match="evidence is for other keyring bytes"):
        apply_keyring_update(current, other, data_dir, evidence)
    with pytest.raises(errors.KeyringError, match="no keyring payload with these bytes"):
        apply_keyring_update(
            current, other, data_dir, Rotation(other, evidence.manifest, evidence.signature)
        )
    assert not data_dir.exists()
