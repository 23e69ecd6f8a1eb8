"""The signed manifest (format v1): typed structure, limits and structural validation.

Untrusted bytes become a :class:`Manifest` only through :func:`parse_manifest`, which the
reader calls after the Ed25519 signature over those exact bytes was verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.bundle import canonical
from appliance.bundle.errors import (
    ManifestSchemaError,
    NonCanonicalManifestError,
    SizeLimitError,
    UnsupportedFormatError,
    UnsupportedPayloadError,
)

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
SIGNATURE_SIZE = 64
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

KIND_FULL = "full"
KIND_KEYRING = "keyring"
KIND_DELTA = "delta"  # rebuilt from the active slot (delta.py); needs ``base`` and ``method``
KINDS = frozenset({KIND_FULL, KIND_KEYRING, KIND_DELTA})
DELTA_METHODS = frozenset({"ekdelta1", "ekdelta2"})  # delta.METHODS
COMPRESSIONS = frozenset({"none", "zstd"})

DEFAULT_CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 12
MAX_CHUNK_SIZE = 1 << 24
# ustar's 11 octal digits: the largest member a canonical header can describe.
MAX_MEMBER_SIZE = 8**11 - 1

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
IDENT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
# semver 2.0.0 (https://semver.org), anchored.
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


class WireChunk(msgspec.Struct, forbid_unknown_fields=True):
    """One chunk of a payload as transferred: its byte count and sha256 (hex)."""

    size: int
    sha256: str


class Image(msgspec.Struct, forbid_unknown_fields=True):
    """What the payload becomes on the device (the slot image): size, sha256, chunk digests."""

    size: int
    sha256: str
    chunks: list[str]


class Base(msgspec.Struct, forbid_unknown_fields=True):
    """For ``delta``: the slot image (size, whole sha256) a delta applies to."""

    size: int
    sha256: str


class Payload(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One payload member: kind, wire encoding and digests at both levels."""

    name: str
    kind: str
    compression: str
    size: int
    chunks: list[WireChunk]
    image: Image
    base: Base | None = None  # kind "delta" only
    method: str | None = None  # kind "delta" only


class Manifest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The whole signed manifest."""

    format: int
    product: str
    targets: list[str]
    version: str
    security_version: int
    created: int
    key_id: str
    chunk_size: int
    payloads: list[Payload]
    expires: int | None = None
    allow_downgrade: bool = False  # signed consent to an older version at the same level

    def payload(self, name: str) -> Payload:
        """The payload called ``name`` (KeyError if absent)."""
        for item in self.payloads:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        """The canonical bytes that get signed."""
        return canonical.encode(msgspec.to_builtins(self))


@dataclass(frozen=True)
class Limits:
    """Configured maxima, checked before anything of that size is read."""

    # ~160 manifest bytes per chunk: 4 MiB covers 16 GiB images at 1 MiB chunks.
    max_manifest_size: int = 4 << 20
    max_payload_size: int = MAX_MEMBER_SIZE
    max_image_size: int = 16 << 30
    max_chunk_size: int = MAX_CHUNK_SIZE
    max_keyring_size: int = 1 << 20
    max_payloads: int = 8


def zstd_bound(size: int) -> int:
    """Upper bound of a zstd frame holding ``size`` bytes (ZSTD_COMPRESSBOUND plus a header)."""
    margin = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + margin + 64


def semver_key(version: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
    """A sort key with semver 2.0.0 precedence (build metadata ignored; ValueError if invalid).

    A release sorts after its pre-releases; numeric identifiers before alphanumeric ones.
    """
    match = SEMVER_RE.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not semver")
    major, minor, patch, pre = match.group(1, 2, 3, 4)
    if pre is None:
        tail: tuple[tuple[int, int | str], ...] = ((2, 0),)  # after every pre-release
    else:
        tail = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return int(major), int(minor), int(patch), tail


def is_older(version: str, than: str) -> bool:
    """Whether semver ``version`` precedes ``than`` (False if either is not semver)."""
    try:
        return semver_key(version) < semver_key(than)
    except ValueError:
        return False


def _fail(field: str, problem: str) -> ManifestSchemaError:
    return ManifestSchemaError(f"manifest.json field {field}: {problem}")


def parse_manifest(data: bytes, limits: Limits) -> Manifest:
    """Decode and validate canonical manifest bytes (already signature-checked)."""
    raw = canonical.decode(data)
    if not isinstance(raw, dict):
        raise _fail("(root)", "must be a JSON object")
    fmt = raw.get("format")
    if fmt != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"manifest.json format {fmt!r} is not supported (this reader knows {FORMAT_VERSION}); "
            "update the device runtime first or rebuild the bundle for format 1"
        )
    try:
        manifest = msgspec.convert(raw, type=Manifest, strict=True)
    except msgspec.ValidationError as exc:
        raise ManifestSchemaError(f"manifest.json: {exc}") from None
    if manifest.to_bytes() != data:
        raise NonCanonicalManifestError(
            "manifest.json carries a default-valued optional field (e.g. null); omit it"
        )
    validate(manifest, limits)
    return manifest


def _check_ident(field: str, value: str) -> None:
    if not IDENT_RE.match(value):
        raise _fail(field, f"{value!r} must match {IDENT_RE.pattern}")


def validate(m: Manifest, limits: Limits) -> None:  # noqa: PLR0912 - one rule per branch
    """Check every structural rule of FORMAT.md (not policy: product/target/version)."""
    _check_ident("product", m.product)
    if not m.targets:
        raise _fail("targets", "must list at least one hardware target")
    for i, target in enumerate(m.targets):
        _check_ident(f"targets[{i}]", target)
    if len(set(m.targets)) != len(m.targets):
        raise _fail("targets", "lists a target twice")
    if not SEMVER_RE.match(m.version):
        raise _fail("version", f"{m.version!r} is not semver (MAJOR.MINOR.PATCH[-pre][+build])")
    if m.security_version < 0:
        raise _fail("security_version", "must be >= 0")
    if m.created < 0:
        raise _fail("created", "must be a Unix time >= 0")
    if m.expires is not None and m.expires <= m.created:
        raise _fail("expires", "must be later than created")
    if not KEY_ID_RE.match(m.key_id):
        raise _fail("key_id", "must be 16 lowercase hex digits")
    cs = m.chunk_size
    if cs < MIN_CHUNK_SIZE or cs > MAX_CHUNK_SIZE or cs & (cs - 1):
        raise _fail(
            "chunk_size", f"{cs} must be a power of two in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
        )
    if cs > limits.max_chunk_size:
        raise SizeLimitError(
            f"manifest.json chunk_size {cs} exceeds the configured maximum {limits.max_chunk_size}"
        )
    if not m.payloads:
        raise _fail("payloads", "must list at least one payload")
    if len(m.payloads) > limits.max_payloads:
        raise SizeLimitError(
            f"manifest.json lists {len(m.payloads)} payloads; the maximum is {limits.max_payloads}"
        )
    names = [p.name for p in m.payloads]
    if len(set(names)) != len(names):
        raise _fail("payloads", "two payloads have the same name")
    kinds = [p.kind for p in m.payloads]
    for i, p in enumerate(m.payloads):
        _validate_payload(f"payloads[{i}]", p, cs, limits)
        if kinds.count(p.kind) > 1:
            raise _fail(f"payloads[{i}].kind", f"at most one {p.kind!r} payload per bundle")


def _validate_payload(where: str, p: Payload, cs: int, limits: Limits) -> None:  # noqa: PLR0912
    if not NAME_RE.match(p.name) or p.name in RESERVED_NAMES:
        raise _fail(f"{where}.name", f"{p.name!r} must match {NAME_RE.pattern} and not be reserved")
    if p.kind not in KINDS:
        raise UnsupportedPayloadError(
            f"manifest.json {where}.kind {p.kind!r} is not supported by this reader "
            "(knows: full, keyring, delta)"
        )
    if p.kind == KIND_DELTA:
        _validate_delta(where, p)
    elif p.base is not None or p.method is not None:
        raise _fail(where, "base/method are only for kind 'delta'")
    if p.compression not in COMPRESSIONS:
        raise UnsupportedPayloadError(
            f"manifest.json {where}.compression {p.compression!r} is not supported (none, zstd)"
        )
    img = p.image
    if img.size <= 0:
        raise _fail(f"{where}.image.size", "must be > 0")
    limit = limits.max_keyring_size if p.kind == KIND_KEYRING else limits.max_image_size
    if img.size > limit:
        raise SizeLimitError(
            f"manifest.json {where}.image.size {img.size} exceeds the configured maximum {limit}"
        )
    if p.size > min(limits.max_payload_size, MAX_MEMBER_SIZE):
        raise SizeLimitError(
            f"manifest.json {where}.size {p.size} exceeds the configured maximum "
            f"{limits.max_payload_size}"
        )
    if p.kind == KIND_KEYRING and p.compression != "none":
        raise _fail(f"{where}.compression", "a keyring payload is stored uncompressed ('none')")
    if not HEX64_RE.match(img.sha256):
        raise _fail(f"{where}.image.sha256", "must be 64 lowercase hex digits")
    n = -(-img.size // cs)
    if len(img.chunks) != n or len(p.chunks) != n:
        raise _fail(
            f"{where}.chunks",
            f"an image of {img.size} bytes in chunks of {cs} needs {n} digests at both levels",
        )
    total = 0
    bound = zstd_bound(cs) if p.kind != KIND_DELTA else delta_chunk_bound(cs)
    for i, (wire, digest) in enumerate(zip(p.chunks, img.chunks, strict=True)):
        if not HEX64_RE.match(digest) or not HEX64_RE.match(wire.sha256):
            raise _fail(f"{where}.chunks[{i}]", "digests must be 64 lowercase hex digits")
        expect = min(cs, img.size - i * cs)
        if (
            p.compression == "none"
            and p.kind != KIND_DELTA
            and (wire.size != expect or wire.sha256 != digest)
        ):
            raise _fail(f"{where}.chunks[{i}]", "uncompressed chunks must equal the image chunks")
        if not 0 < wire.size <= bound:
            raise _fail(f"{where}.chunks[{i}].size", f"{wire.size} outside (0, {bound}]")
        total += wire.size
    if total != p.size:
        raise _fail(f"{where}.size", f"{p.size} differs from the sum of its chunk sizes {total}")


def delta_chunk_bound(chunk_size: int) -> int:
    """Largest wire size of one ``ekdelta1``/``ekdelta2`` chunk (see appliance/bundle/delta.py)."""
    from appliance.bundle.delta import chunk_bound

    return chunk_bound(chunk_size)


def _validate_delta(where: str, p: Payload) -> None:
    if p.method not in DELTA_METHODS:
        raise UnsupportedPayloadError(
            f"manifest.json {where}.method {p.method!r} is not supported "
            f"(knows: {', '.join(sorted(DELTA_METHODS))}); update the device runtime first"
        )
    if p.base is None:
        raise _fail(f"{where}.base", "a delta must name the base image it applies to")
    if p.base.size <= 0 or not HEX64_RE.match(p.base.sha256):
        raise _fail(f"{where}.base", "needs size > 0 and a 64-hex-digit sha256")
    if p.compression != "none":
        raise _fail(f"{where}.compression", "a delta's chunks compress themselves: use 'none'")


def describe(m: Manifest) -> dict[str, Any]:
    """A short JSON-able summary for ``appliance bundle info``."""
    return {
        "format": m.format,
        "product": m.product,
        "targets": m.targets,
        "version": m.version,
        "security_version": m.security_version,
        "created": m.created,
        "expires": m.expires,
        "allow_downgrade": m.allow_downgrade,
        "key_id": m.key_id,
        "chunk_size": m.chunk_size,
        "payloads": [
            {
                "name": p.name,
                "kind": p.kind,
                "compression": p.compression,
                "size": p.size,
                "image_size": p.image.size,
                "image_sha256": p.image.sha256,
                "chunks": len(p.chunks),
                **({"base_sha256": p.base.sha256, "method": p.method} if p.base else {}),
            }
            for p in m.payloads
        ],
    }
