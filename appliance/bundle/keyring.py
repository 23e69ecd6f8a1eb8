"""The device keyring: trusted Ed25519 public keys with ids, revocation, expiry and rotation.

A keyring is canonical JSON (FORMAT.md, "Keyring"). The image bakes one in; a newer one may
arrive as a ``keyring`` payload inside a bundle signed by a currently trusted key, and is kept
on the data partition (``keys/keyring-v1.json``: the file name carries the format version so an
older slot keeps reading its own format, docs/decisions.md §10) with the evidence that
authenticates it at every load (:mod:`appliance.bundle.keychain`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.bundle import canonical
from appliance.bundle.errors import (
    BundleError,
    KeyExpiredError,
    KeyringError,
    KeyringRollbackError,
    RevokedKeyError,
    UnknownKeyError,
)

log = logging.getLogger(__name__)

KEYRING_FORMAT = 1
ALGORITHM = "ed25519"
# Where the image bakes the keyring (inside each slot, read-only).
DEVICE_KEYRING = Path("/etc/edgekiln/keyring.json")
# Relative to the data partition's mount point.
DATA_KEYRING_PATH = Path("keys") / f"keyring-v{KEYRING_FORMAT}.json"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def key_id_for(raw_public_key: bytes) -> str:
    """A key's id: the first 16 hex digits of sha256 of its 32 raw public-key bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


class _KeyDoc(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: str
    algorithm: str
    public_key: str  # base64 (standard alphabet, padded) of the 32 raw bytes
    revoked: bool = False
    not_after: int | None = None
    comment: str | None = None


class _KeyringDoc(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    version: int
    keys: list[_KeyDoc]


@dataclass(frozen=True)
class TrustedKey:
    """One keyring entry."""

    id: str
    public_key: bytes
    revoked: bool = False
    not_after: int | None = None
    comment: str | None = None

    @classmethod
    def from_public_key(cls, raw: bytes, comment: str | None = None) -> TrustedKey:
        """A fresh (not revoked) entry for 32 raw Ed25519 public-key bytes."""
        Ed25519PublicKey.from_public_bytes(raw)  # validates length/encoding
        return cls(id=key_id_for(raw), public_key=raw, comment=comment)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True if ``signature`` is this key's Ed25519 signature of ``data``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Keyring:
    """A versioned set of trusted keys; ``version`` only grows through rotation."""

    version: int
    keys: tuple[TrustedKey, ...] = field(default_factory=tuple)
    source: str = "keyring"

    # -- parsing / serialising --------------------------------------------------------------

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "keyring") -> Keyring:
        """Parse canonical keyring JSON; every id must match its key."""
        try:
            raw = canonical.decode(data, source)
            doc = msgspec.convert(raw, type=_KeyringDoc, strict=True)
        except BundleError as exc:
            raise KeyringError(f"keyring {source}: {exc}") from None
        except msgspec.ValidationError as exc:
            raise KeyringError(f"keyring {source}: {exc}") from None
        if doc.format != KEYRING_FORMAT:
            raise KeyringError(
                f"keyring {source}: format {doc.format} unsupported (knows {KEYRING_FORMAT})"
            )
        if doc.version < 1:
            raise KeyringError(f"keyring {source}: version must be >= 1")
        keys: list[TrustedKey] = []
        for i, k in enumerate(doc.keys):
            where = f"keyring {source} keys[{i}]"
            if k.algorithm != ALGORITHM:
                raise KeyringError(f"{where}: algorithm {k.algorithm!r} unsupported (ed25519 only)")
            try:
                pub = base64.b64decode(k.public_key, validate=True)
                Ed25519PublicKey.from_public_bytes(pub)
            except ValueError:
                raise KeyringError(
                    f"{where}: public_key is not base64 of 32 Ed25519 bytes"
                ) from None
            if not _KEY_ID_RE.match(k.id) or k.id != key_id_for(pub):
                raise KeyringError(
                    f"{where}: id {k.id!r} does not match the key (expected {key_id_for(pub)})"
                )
            keys.append(TrustedKey(k.id, pub, k.revoked, k.not_after, k.comment))
        if len({k.id for k in keys}) != len(keys):
            raise KeyringError(f"keyring {source}: a key is listed twice")
        ring = cls(version=doc.version, keys=tuple(keys), source=source)
        if ring.to_bytes() != data:
            raise KeyringError(f"keyring {source}: not canonical (default-valued field present?)")
        return ring

    @classmethod
    def load(cls, path: Path | str) -> Keyring:
        """Read a keyring file."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyringError(
                f"cannot read keyring {path}: {exc.strerror}; pass --keyring PATH"
            ) from None
        return cls.from_bytes(data, str(path))

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (what a ``keyring`` payload carries)."""
        doc = _KeyringDoc(
            format=KEYRING_FORMAT,
            version=self.version,
            keys=[
                _KeyDoc(
                    id=k.id,
                    algorithm=ALGORITHM,
                    public_key=base64.b64encode(k.public_key).decode("ascii"),
                    revoked=k.revoked,
                    not_after=k.not_after,
                    comment=k.comment,
                )
                for k in self.keys
            ],
        )
        return canonical.encode(msgspec.to_builtins(doc))

    # -- queries ------------------------------------------------------------------------------

    def get(self, key_id: str) -> TrustedKey:
        """The entry for ``key_id`` (UnknownKeyError if absent; revoked keys are returned)."""
        for key in self.keys:
            if key.id == key_id:
                return key
        raise UnknownKeyError(
            f"bundle is signed by key {key_id}, which is not in {self.source} "
            f"(version {self.version}); "
            "sign with a trusted key or rotate the keyring first"
        )

    def require_usable(self, key_id: str, created: int, now: int | None) -> TrustedKey:
        """The entry for ``key_id`` if it is neither revoked nor past ``not_after``."""
        key = self.get(key_id)
        if key.revoked:
            raise RevokedKeyError(
                f"key {key_id} is revoked in {self.source} (version {self.version}); refused"
            )
        if key.not_after is not None:
            if created > key.not_after:
                raise KeyExpiredError(
                    f"key {key_id} is valid until {key.not_after} but the bundle was created "
                    f"at {created}"
                )
            if now is not None and now > key.not_after:
                raise KeyExpiredError(
                    f"key {key_id} expired at {key.not_after} (trusted time now {now})"
                )
        return key

    # -- rotation -----------------------------------------------------------------------------

    def check_successor(self, new: Keyring) -> None:
        """Refuse a keyring update that is not newer, un-revokes a key, or trusts nothing."""
        if new.version <= self.version:
            raise KeyringRollbackError(
                f"keyring update has version {new.version}, not newer than the current "
                f"{self.version}"
            )
        new_ids = {k.id: k for k in new.keys}
        for old in self.keys:
            if old.revoked and old.id in new_ids and not new_ids[old.id].revoked:
                raise KeyringRollbackError(
                    f"keyring update un-revokes key {old.id}; revocation is permanent"
                )
        if not any(not k.revoked for k in new.keys):
            raise KeyringRollbackError(
                "keyring update leaves no usable key; the device could never update again"
            )


def __getattr__(name: str) -> Any:
    """Loading and storing rotated keyrings moved to :mod:`appliance.bundle.keychain`."""
    if name in ("effective_keyring", "apply_keyring_update", "load_keyring"):
        from appliance.bundle import keychain

        return getattr(keychain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
