"""Rotated keyrings on data, authenticated at every load by the chain of bundles that brought them.

A keyring rotation arrives as a ``keyring`` payload of a bundle signed by a key the device
trusted then. The data partition is writable by anyone with the disk in hand, so the rotated
keyring on data (``keys/keyring-v1.json``) is never trusted for being there: beside it,
``keys/keyring-v1.chain.json`` keeps the evidence of each rotation (the keyring bytes, the
``manifest.json`` bytes and ``manifest.sig`` of the bundle that carried it). At load, starting
from the keyring baked into the running slot, each link whose version is newer than the keyring
reached so far must be signed by a usable key of that keyring, its signed manifest must list a
``keyring`` payload with exactly those bytes (size and sha256), and it must be a valid successor
(newer, no key un-revoked, one usable key left). The keyring file on data is used only when it
is the end of that chain; otherwise the refusal is logged and the authenticated keyring (the
baked one, or the last authenticated link) is used.

Revocations only ever remove trust, so they are monotonic across everything the device holds: a
key revoked in the baked keyring, in the keyring file on data or in any link stays revoked, also
when a newer slot bakes a keyring that lists it as usable again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import msgspec

from appliance.bundle.errors import BundleError, KeyringError
from appliance.bundle.keyring import DATA_KEYRING_PATH, KEYRING_FORMAT, Keyring
from appliance.bundle.manifest import KIND_KEYRING, Limits, parse_manifest
from appliance.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

CHAIN_PATH = DATA_KEYRING_PATH.with_name(f"keyring-v{KEYRING_FORMAT}.chain.json")
MAX_CHAIN_BYTES = 16 << 20  # a link is ~1 KB plus its manifest (~160 bytes per image chunk)
MAX_LINKS = 32


class KeyringChainError(KeyringError):
    """A rotated keyring on data is not reached by a valid signature chain from the baked one."""


class _LinkDoc(msgspec.Struct, forbid_unknown_fields=True):
    keyring: str  # base64 of the canonical keyring bytes
    manifest: str  # base64 of the manifest.json bytes of the bundle that carried it
    signature: str  # base64 of its manifest.sig


class _ChainDoc(msgspec.Struct, forbid_unknown_fields=True):
    format: int
    links: list[_LinkDoc]


@dataclass(frozen=True)
class Rotation:
    """One rotation's evidence: the keyring and the signed manifest of the bundle carrying it."""

    keyring: bytes
    manifest: bytes
    signature: bytes


@dataclass(frozen=True)
class LoadedKeyring:
    """The keyring to trust, and why the one on data was not used (None: used, or none there)."""

    keyring: Keyring
    refused: str | None = None


def verify_rotation(current: Keyring, link: Rotation, where: str) -> Keyring:
    """The keyring of ``link`` if ``current`` authorised it through a signed bundle."""
    signer = next((k for k in current.keys if k.verify(link.signature, link.manifest)), None)
    if signer is None:
        raise KeyringChainError(
            f"{where}: the manifest of the bundle that carried this keyring is not signed by any "
            f"key of {current.source} (version {current.version})"
        )
    try:
        manifest = parse_manifest(link.manifest, Limits())
    except BundleError as exc:
        raise KeyringChainError(f"{where}: its signed manifest is invalid: {exc}") from None
    if manifest.key_id != signer.id:
        raise KeyringChainError(
            f"{where}: manifest names key {manifest.key_id}, signed by {signer.id}"
        )
    try:
        current.require_usable(signer.id, manifest.created, None)
    except BundleError as exc:
        raise KeyringChainError(f"{where}: {exc}") from None
    digest = hashlib.sha256(link.keyring).hexdigest()
    if not any(
        p.kind == KIND_KEYRING and p.image.sha256 == digest and p.image.size == len(link.keyring)
        for p in manifest.payloads
    ):
        raise KeyringChainError(
            f"{where}: the signed manifest carries no keyring payload with these bytes "
            f"(sha256 {digest[:16]}...)"
        )
    new = Keyring.from_bytes(link.keyring, where)
    current.check_successor(new)
    return new


def _read_chain(data_dir: Path) -> list[Rotation]:
    path = data_dir / CHAIN_PATH
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CHAIN_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyringChainError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > MAX_CHAIN_BYTES:
        raise KeyringChainError(f"{path} is larger than {MAX_CHAIN_BYTES} bytes")
    try:
        doc = msgspec.json.decode(raw, type=_ChainDoc)
        if doc.format != KEYRING_FORMAT or len(doc.links) > MAX_LINKS:
            raise ValueError(f"format {doc.format}, {len(doc.links)} links")
        return [
            Rotation(*(base64.b64decode(v, validate=True) for v in (d.keyring, d.manifest,
                                                                      d.signature)))
            for d in doc.links
        ]  # fmt: skip
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise KeyringChainError(f"{path} is damaged: {exc}") from None


def _write_chain(data_dir: Path, links: list[Rotation]) -> None:
    doc = _ChainDoc(
        KEYRING_FORMAT,
        [
            _LinkDoc(*(base64.b64encode(v).decode() for v in (r.keyring, r.manifest, r.signature)))
            for r in links
        ],
    )
    data = msgspec.json.encode(doc)
    while len(data) > MAX_CHAIN_BYTES // 2 and len(doc.links) > 1:
        doc.links.pop(0)  # oldest first: the newest link carries every revocation forward
        data = msgspec.json.encode(doc)
    atomic_write_bytes(data_dir / CHAIN_PATH, data, mode=0o644)


def _revoked_ids(rings: list[Keyring]) -> set[str]:
    return {k.id for ring in rings for k in ring.keys if k.revoked}


def _with_revocations(ring: Keyring, revoked: set[str]) -> Keyring:
    if not any(k.id in revoked and not k.revoked for k in ring.keys):
        return ring
    keys = tuple(dataclasses.replace(k, revoked=True) if k.id in revoked else k for k in ring.keys)
    return Keyring(ring.version, keys, f"{ring.source} (+ revocations kept on data)")


def load_keyring(baked: Path, data_dir: Path | None) -> LoadedKeyring:
    """The keyring to trust: the baked one, advanced along the authenticated rotation chain."""
    ring = Keyring.load(baked)
    if data_dir is None:
        return LoadedKeyring(ring)
    path = data_dir / DATA_KEYRING_PATH
    seen = [ring]
    refused: str | None = None
    try:
        with open(path, "rb") as f:  # bounded: the data partition is not trusted
            raw = f.read(Limits().max_keyring_size + 1)
        if len(raw) > Limits().max_keyring_size:
            raise KeyringError(f"larger than {Limits().max_keyring_size} bytes")
        on_data: Keyring | None = Keyring.from_bytes(raw, str(path))
    except FileNotFoundError:
        on_data = None
    except (OSError, KeyringError) as exc:
        on_data, refused = (
            None,
            f"{path} is unreadable or invalid ({exc}); the baked keyring is used",
        )
    current = ring
    try:
        links = _read_chain(data_dir) if on_data is not None else []
    except KeyringChainError as exc:
        links, refused = [], str(exc)
    for i, link in enumerate(links):
        where = f"{data_dir / CHAIN_PATH} link {i}"
        try:
            linked = Keyring.from_bytes(link.keyring, where)
            seen.append(linked)
            if linked.version > current.version:
                current = verify_rotation(current, link, where)
        except KeyringError as exc:
            refused = refused or str(exc)
            break
    if on_data is not None:
        seen.append(on_data)
        if on_data.version > current.version or (
            on_data.version == current.version and on_data.to_bytes() != current.to_bytes()
        ):
            refused = refused or (
                f"{path} (version {on_data.version}) is not reached by a signature chain from "
                f"the baked keyring (version {ring.version}): no rotation evidence in "
                f"{data_dir / CHAIN_PATH} names it"
            )
    if refused is not None:
        refused = (
            f"rotated keyring refused: {refused}; trusting {current.source} (version "
            f"{current.version}). Re-install the bundle that carried the rotation, or reflash "
            "data if it was tampered with"
        )
        log.error("%s", refused)
    elif current is not ring:
        current = Keyring(current.version, current.keys, str(path))
    return LoadedKeyring(_with_revocations(current, _revoked_ids(seen)), refused)


def effective_keyring(baked: Path, data_dir: Path | None) -> Keyring:
    """The keyring to trust here (see :func:`load_keyring`; a refusal is logged)."""
    return load_keyring(baked, data_dir).keyring


def apply_keyring_update(
    current: Keyring, new_bytes: bytes, data_dir: Path, rotation: Rotation
) -> Keyring:
    """Validate a verified ``keyring`` payload against ``current``; store it and its evidence.

    ``rotation`` is the evidence of the bundle that carried ``new_bytes`` (its keyring bytes,
    ``manifest_bytes`` and ``signature``): it is verified here as it will be at every load, then
    appended to the chain on data before the keyring file is replaced (both atomic; a power cut
    between them leaves the old keyring in force, which the chain still reaches).
    """
    target = data_dir / DATA_KEYRING_PATH
    if rotation.keyring != new_bytes:
        raise KeyringChainError(f"{target}: the rotation evidence is for other keyring bytes")
    new = verify_rotation(current, rotation, f"{target} (update)")
    try:
        links = _read_chain(data_dir)
    except KeyringChainError as exc:
        log.warning("%s; starting a new rotation chain", exc)
        links = []
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_chain(data_dir, [*links[-(MAX_LINKS - 1) :], rotation])
    atomic_write_bytes(target, new_bytes, mode=0o644)
    log.info("keyring rotated to version %d (%d keys) at %s", new.version, len(new.keys), target)
    return Keyring(version=new.version, keys=new.keys, source=str(target))
