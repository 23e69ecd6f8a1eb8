"""Helpers for bundle tests: deterministic keys, tiny bundles, hand-made (bad) archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle import (
    Keyring,
    Limits,
    MemorySink,
    PayloadSource,
    Policy,
    TrustedKey,
    canonical,
    open_bundle,
    tarstream,
    write_bundle,
)
from appliance.bundle.keyring import key_id_for
from appliance.bundle.manifest import Manifest

PRODUCT = "acme-cam"
TARGET = "generic-x86-64"
CREATED = 1_750_000_000
CHUNK = 4096


def fixed_key(label: str) -> Ed25519PrivateKey:
    """A deterministic test key (never use outside tests)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


def raw_pub(key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


KEY = fixed_key("edgekiln test release key A")
REVOKED_KEY = fixed_key("edgekiln test release key B (revoked)")
EXPIRING_KEY = fixed_key("edgekiln test release key C (not_after)")
STRANGER_KEY = fixed_key("edgekiln test key D (not in keyring)")
NEXT_KEY = fixed_key("edgekiln test release key E (rotated in)")


def trusted_keyring(version: int = 1) -> Keyring:
    """A keyring trusting KEY, revoking REVOKED_KEY, EXPIRING_KEY valid until CREATED - 1."""
    return Keyring(
        version=version,
        keys=(
            TrustedKey.from_public_key(raw_pub(KEY), "A"),
            TrustedKey(key_id_for(raw_pub(REVOKED_KEY)), raw_pub(REVOKED_KEY), revoked=True),
            TrustedKey(
                key_id_for(raw_pub(EXPIRING_KEY)), raw_pub(EXPIRING_KEY), not_after=CREATED - 1
            ),
        ),
    )


def image_bytes(size: int = CHUNK * 2 + 1000, seed: int = 1) -> bytes:
    """Deterministic, partly compressible image content."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, counter)).digest() + bytes(32)
        counter += 1
    return bytes(out[:size])


def make_bundle(
    image: bytes | None = None,
    *,
    key: Ed25519PrivateKey = KEY,
    compression: str = "none",
    keyring_payload: bytes | None = None,
    **manifest: Any,
) -> bytes:
    """A valid bundle (tiny chunks) with optional manifest field overrides."""
    fields: dict[str, Any] = {
        "product": PRODUCT,
        "targets": [TARGET],
        "version": "1.2.3",
        "security_version": 5,
        "created": CREATED,
    }
    fields.update(manifest)
    payloads = [
        PayloadSource(
            "rootfs.img", "full", image if image is not None else image_bytes(), compression
        )
    ]
    if keyring_payload is not None:
        payloads.append(PayloadSource.keyring(keyring_payload))
    out = io.BytesIO()
    write_bundle(out, key=key, payloads=payloads, chunk_size=CHUNK, **fields)
    return out.getvalue()


@dataclass
class Member:
    """A raw archive member for hand-made archives."""

    name: str
    data: bytes
    header: bytes | None = None  # None: canonical header


def split_members(bundle: bytes) -> list[Member]:
    """Cut a valid bundle into its members (canonical headers)."""
    out: list[Member] = []
    pos = 0
    while bundle[pos : pos + 512] != bytes(512):
        head = bundle[pos : pos + 512]
        name = head[:100].split(b"\0", 1)[0].decode()
        size = int(head[124:135], 8)
        out.append(Member(name, bundle[pos + 512 : pos + 512 + size]))
        pos += 512 + size + tarstream.padding(size)
    return out


def assemble(members: list[Member], end: bool = True) -> bytes:
    """Join members into an archive (canonical headers unless given)."""
    buf = bytearray()
    for m in members:
        buf += m.header if m.header is not None else tarstream.build_header(m.name, len(m.data))
        buf += m.data + bytes(tarstream.padding(len(m.data)))
    if end:
        buf += tarstream.END_OF_ARCHIVE
    return bytes(buf)


def special_header(name: str, kind: bytes, size: int = 0, linkname: str = "") -> bytes:
    """A valid-checksum ustar header of another type (link, device, ...), made by tarfile."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    info.linkname = linkname
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)[:512]


def resign(
    bundle: bytes, edit: Any, key: Ed25519PrivateKey = KEY, raw: bytes | None = None
) -> bytes:
    """Re-sign a bundle after ``edit(manifest_dict)`` (or with ``raw`` manifest bytes)."""
    members = split_members(bundle)
    value = canonical.decode(members[0].data)
    if raw is None:
        edit(value)
        raw = canonical.encode(value)
    members[0] = Member("manifest.json", raw)
    members[1] = Member("manifest.sig", key.sign(raw))
    return assemble(members)


def manifest_of(bundle: bytes) -> dict[str, Any]:
    return canonical.decode(split_members(bundle)[0].data)  # type: ignore[no-any-return]


@dataclass
class RecordingSink:
    """Records every write; ``armed`` is False until the test says the manifest was verified."""

    writes: list[tuple[int, bytes]] = field(default_factory=list)
    flushes: int = 0
    armed: bool = False
    early: list[int] = field(default_factory=list)

    def write(self, offset: int, data: bytes) -> None:
        if not self.armed:
            self.early.append(offset)
        self.writes.append((offset, bytes(data)))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass

    def image(self) -> bytes:
        buf = MemorySink(1 << 30)
        for offset, data in self.writes:
            buf.write(offset, data)
        return bytes(buf.buffer)


def policy(**overrides: Any) -> Policy:
    fields: dict[str, Any] = {
        "keyring": trusted_keyring(),
        "product": PRODUCT,
        "target": TARGET,
        "min_security_version": 0,
        "trusted_now": None,
        "limits": Limits(),
    }
    fields.update(overrides)
    return Policy(**fields)


def read_all(bundle: bytes, pol: Policy | None = None, sink: Any = None) -> Manifest:
    """open + stream every payload + finish; returns the manifest."""
    verified = open_bundle(io.BytesIO(bundle), pol or policy())
    if sink is not None:
        sink.armed = True
    for p in verified.manifest.payloads:
        verified.stream_payload(
            p.name, sink if (sink is not None and p.kind == "full") else MemorySink(1 << 26)
        )
    verified.finish()
    return verified.manifest
