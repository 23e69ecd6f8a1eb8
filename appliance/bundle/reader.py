"""Read a bundle front to back: authenticate the manifest first, then stream verified chunks.

Nothing reaches a :class:`~appliance.bundle.sink.Sink` before the manifest's signature, key
and policy checks passed (this module); within a payload each chunk reaches it only after its
wire and image digests matched (:mod:`appliance.bundle.verified`). Memory stays O(chunk) (plus
the manifest, capped by ``Limits``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import BinaryIO

from appliance.bundle import canonical, tarstream
from appliance.bundle.errors import (
    BundleError,
    BundleExpiredError,
    DowngradeError,
    DuplicateMemberError,
    MissingMemberError,
    RevokedKeyError,
    RollbackError,
    SignatureInvalidError,
    SizeMismatchError,
    UnexpectedMemberError,
    UnknownKeyError,
    WrongProductError,
    WrongTargetError,
)
from appliance.bundle.keyring import Keyring, TrustedKey
from appliance.bundle.manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SIGNATURE_SIZE,
    Limits,
    Manifest,
    is_older,
    parse_manifest,
)
from appliance.bundle.verified import Progress, VerifiedBundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    """What this device accepts; the installer builds it from the keyring and the state file.

    ``product``/``target`` None skip that check (diagnostics only: the installer always sets
    them). ``trusted_now`` is a Unix time only when the clock is trusted (docs/decisions.md
    §6), else None and expiry is not enforced. ``min_security_version`` is the device's
    anti-rollback floor (docs/decisions.md §19). ``running_version`` is the release the device
    runs: an older ``version`` at the floor's ``security_version`` is refused unless the signed
    manifest says ``allow_downgrade`` (None: not checked).
    """

    keyring: Keyring
    product: str | None
    target: str | None
    min_security_version: int = 0
    trusted_now: int | None = None
    limits: Limits = field(default_factory=Limits)
    running_version: str | None = None


def _untrusted_key_id(data: bytes) -> str | None:
    """Best-effort key id from an unauthenticated manifest, for the error message only."""
    try:
        value = canonical.decode(data)
    except BundleError:
        return None
    key_id = value.get("key_id") if isinstance(value, dict) else None
    return key_id if isinstance(key_id, str) else None


def _find_signer(keyring: Keyring, data: bytes, signature: bytes) -> TrustedKey:
    """The keyring entry whose key signed ``data``; checked before the JSON is even parsed."""
    for key in keyring.keys:
        if key.verify(signature, data):
            if key.revoked:
                raise RevokedKeyError(
                    f"manifest.json is signed by key {key.id}, revoked in {keyring.source} "
                    f"(version {keyring.version}); refused"
                )
            return key
    claimed = _untrusted_key_id(data)
    if claimed is not None and all(k.id != claimed for k in keyring.keys):
        raise UnknownKeyError(
            f"manifest.json names key {claimed}, which is not in {keyring.source} "
            f"(version {keyring.version}); sign with a trusted key or rotate the keyring first"
        )
    raise SignatureInvalidError(
        "manifest.sig is not a valid signature of manifest.json by any trusted key: "
        "the bundle was altered or damaged; fetch it again"
    )


def check_policy(m: Manifest, policy: Policy) -> None:
    """Refuse an authentic manifest that is not for this device now."""
    if policy.product is not None and m.product != policy.product:
        raise WrongProductError(
            f"bundle is for product {m.product!r}, this device is {policy.product!r}"
        )
    if policy.target is not None and policy.target not in m.targets:
        raise WrongTargetError(
            f"bundle is for targets {', '.join(m.targets)}; this device is {policy.target!r}"
        )
    if m.security_version < policy.min_security_version:
        raise RollbackError(
            f"bundle security_version {m.security_version} is below the committed "
            f"{policy.min_security_version} (this device's anti-rollback floor); use a newer "
            "bundle"
        )
    if (
        policy.running_version is not None
        and m.security_version <= policy.min_security_version
        and is_older(m.version, policy.running_version)
        and not m.allow_downgrade
    ):
        raise DowngradeError(
            f"bundle version {m.version} is older than the running {policy.running_version} at "
            f"the same security_version {m.security_version}; refused (a release manager may "
            "sign a downgrade with `kiln bundle --allow-downgrade`)"
        )
    if m.expires is not None and policy.trusted_now is not None and policy.trusted_now > m.expires:
        raise BundleExpiredError(
            f"bundle expired at {m.expires} (trusted time now {policy.trusted_now}); "
            "build a fresh one"
        )


def _read_head(reader: tarstream.StreamReader, limits: Limits) -> tuple[bytes, bytes]:
    """Read manifest.json and manifest.sig (the container checks only: nothing is trusted yet)."""
    source = reader.source
    head = tarstream.read_header(reader, MANIFEST_NAME, limits.max_manifest_size)
    if head is None:
        raise MissingMemberError(f"{source} ends before {MANIFEST_NAME}; not a bundle")
    if head.name != MANIFEST_NAME:
        raise UnexpectedMemberError(
            f"{source}: the first member is not {MANIFEST_NAME}; not a bundle"
        )
    data = reader.read_exact(head.size, MANIFEST_NAME)
    tarstream.read_padding(reader, head.size, MANIFEST_NAME)
    head = tarstream.read_header(reader, SIGNATURE_NAME, limits.max_manifest_size)
    if head is None:
        raise MissingMemberError(f"{source} ends before {SIGNATURE_NAME}; the bundle is unsigned")
    if head.name == MANIFEST_NAME:
        raise DuplicateMemberError(f"{source}: {MANIFEST_NAME} appears twice")
    if head.name != SIGNATURE_NAME:
        raise UnexpectedMemberError(
            f"{source}: the second member is not {SIGNATURE_NAME}; not a bundle"
        )
    if head.size != SIGNATURE_SIZE:
        raise SizeMismatchError(
            f"{SIGNATURE_NAME} has {head.size} bytes; an Ed25519 signature has 64"
        )
    signature = reader.read_exact(SIGNATURE_SIZE, SIGNATURE_NAME)
    tarstream.read_padding(reader, SIGNATURE_SIZE, SIGNATURE_NAME)
    return data, signature


def open_bundle(stream: BinaryIO, policy: Policy, source: str = "bundle") -> VerifiedBundle:
    """Read and authenticate manifest.json and manifest.sig; no payload byte is read yet.

    Order: container checks, Ed25519 signature over the exact manifest bytes (before the JSON
    is parsed), canonical form and schema, key usability (revoked, not_after), policy
    (product, target, security_version, expiry). Raises a :class:`BundleError` subclass. The
    stream is then positioned at the first payload header.
    """
    reader = tarstream.StreamReader(stream, source)
    data, signature = _read_head(reader, policy.limits)
    signer = _find_signer(policy.keyring, data, signature)
    manifest = parse_manifest(data, policy.limits)  # bytes are authentic from here on
    if manifest.key_id != signer.id:
        raise SignatureInvalidError(
            f"manifest.json names key {manifest.key_id} but is signed by {signer.id}; refused"
        )
    policy.keyring.require_usable(signer.id, manifest.created, policy.trusted_now)
    check_policy(manifest, policy)
    log.debug("%s: manifest verified (key %s, version %s)", source, signer.id, manifest.version)
    return VerifiedBundle(manifest, data, signature, reader, policy.limits)


def peek_manifest(
    stream: BinaryIO, limits: Limits | None = None, source: str = "bundle"
) -> Manifest:
    """Parse the manifest WITHOUT checking its signature (``bundle info`` with no keyring).

    The result is untrusted: show it, never act on it.
    """
    reader = tarstream.StreamReader(stream, source)
    data, _signature = _read_head(reader, limits or Limits())
    return parse_manifest(data, limits or Limits())


__all__ = [
    "Policy",
    "Progress",
    "VerifiedBundle",
    "check_policy",
    "open_bundle",
    "peek_manifest",
]
