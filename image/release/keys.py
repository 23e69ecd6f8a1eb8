"""Release keys on the build host: Ed25519 key files (encrypted PKCS#8) and keyring files.

A private key is written once, as PEM PKCS#8 encrypted with a passphrase (from
``EDGEKILN_KEY_PASSPHRASE`` or a prompt), file mode 0600, never overwritten. The public half is
a PEM SubjectPublicKeyInfo file beside it; keyrings (appliance.bundle.keyring) list public keys.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.bundle.errors import BundleError
from appliance.bundle.keyring import DEVICE_KEYRING, Keyring, TrustedKey, key_id_for
from appliance.fsutil import atomic_write_bytes, fsync_dir
from image.errors import BuildError

PASSPHRASE_ENV = "EDGEKILN_KEY_PASSPHRASE"  # noqa: S105 - the variable name, not a secret
MIN_PASSPHRASE = 8


class KeyFileError(BuildError):
    """A key or keyring file cannot be created, read or decrypted."""


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw public-key bytes."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def passphrase_from_env() -> bytes | None:
    """The passphrase in ``EDGEKILN_KEY_PASSPHRASE``, if set."""
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value is not None else None


def create_key(name: str, directory: Path, passphrase: bytes) -> tuple[Path, Path, str]:
    """Generate an Ed25519 key; write ``NAME.key`` (0600, encrypted) and ``NAME.pub``.

    Returns (private path, public path, key id). Refuses to overwrite either file.
    """
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name (no '/', no leading '.')")
    if len(passphrase) < MIN_PASSPHRASE:
        raise KeyFileError(
            f"passphrase must have at least {MIN_PASSPHRASE} characters (set {PASSPHRASE_ENV})"
        )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (key_path, pub_path):
        if path.exists():
            raise KeyFileError(f"{path} exists; keys are never overwritten (pick another name)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    # O_EXCL + 0600 from the first byte: the key is never readable by others, even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask may have narrowed it; make it exactly 0600
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    atomic_write_bytes(pub_path, public_pem(key.public_key()), mode=0o644)
    fsync_dir(directory)
    return key_path, pub_path, key_id_for(raw_public(key))


def public_pem(pub: Ed25519PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo."""
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path, passphrase: bytes) -> Ed25519PrivateKey:
    """Decrypt an Ed25519 private key file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"cannot decrypt {path}: {exc} (wrong passphrase in {PASSPHRASE_ENV}?)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def is_encrypted(path: Path) -> bool:
    """True for an encrypted PKCS#8 PEM file."""
    try:
        return b"ENCRYPTED PRIVATE KEY" in path.read_bytes()[:64]
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def load_public_key(path: Path) -> bytes:
    """Raw public-key bytes from a ``.pub`` PEM file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        pub = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(pub, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return raw_public(pub)


def load_keyring_file(path: Path) -> Keyring:
    """A keyring file, with keyring errors turned into builder errors."""
    try:
        return Keyring.load(path)
    except BundleError as exc:
        raise KeyFileError(str(exc)) from None


def bake_keyring(keyring_file: Path, rootfs_dir: Path) -> Path:
    """Install a validated keyring into a root tree at ``/etc/edgekiln/keyring.json``."""
    ring = load_keyring_file(keyring_file)
    if not any(not k.revoked for k in ring.keys):
        raise KeyFileError(f"{keyring_file} has no usable key; the device could never update")
    target = rootfs_dir / DEVICE_KEYRING.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, ring.to_bytes(), mode=0o644)
    return target


def next_keyring(
    base: Keyring | None,
    add: list[tuple[bytes, str | None]],
    revoke: list[str],
    not_after: dict[str, int] | None = None,
) -> Keyring:
    """A new keyring: ``base`` (if any) plus keys, minus trust in revoked ids; version + 1."""
    keys = list(base.keys) if base else []
    ids = {k.id for k in keys}
    for raw, comment in add:
        entry = TrustedKey.from_public_key(raw, comment)
        if entry.id in ids:
            raise KeyFileError(f"key {entry.id} is already in the keyring")
        keys.append(entry)
        ids.add(entry.id)
    for key_id in revoke:
        if key_id not in ids:
            raise KeyFileError(
                f"cannot revoke {key_id}: not in the keyring (ids: {', '.join(sorted(ids))})"
            )
        keys = [replace(k, revoked=True) if k.id == key_id else k for k in keys]
    for key_id, when in (not_after or {}).items():
        if key_id not in ids:
            raise KeyFileError(f"cannot set not_after of {key_id}: not in the keyring")
        keys = [replace(k, not_after=when) if k.id == key_id else k for k in keys]
    if not any(not k.revoked for k in keys):
        raise KeyFileError("the keyring would have no usable key; add one before revoking the last")
    ring = Keyring(version=(base.version + 1) if base else 1, keys=tuple(keys))
    Keyring.from_bytes(ring.to_bytes())  # round-trips through the device's own parser
    return ring
