"""Read a bundle front to back: authenticate the manifest first, then stream verified chunks.

Nothing reaches a :class:`~appliance.bundle.sink.Sink` before the manifest's signature, key
and policy checks passed; within a payload each chunk reaches it only after its wire and image
digests matched. Memory stays O(chunk) (plus the manifest, capped by ``Limits``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from appliance.bundle import canonical, tarstream
from appliance.bundle.delta import MissingBaseError
from appliance.bundle.delta_apply import BaseSlot
from appliance.bundle.errors import (
    BundleError,
    BundleExpiredError,
    ChunkDigestError,
    DecompressionError,
    DuplicateMemberError,
    ExtraMemberError,
    MissingMemberError,
    PayloadOrderError,
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
    KIND_DELTA,
    KIND_KEYRING,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    SIGNATURE_SIZE,
    Limits,
    Manifest,
    Payload,
    parse_manifest,
)
from appliance.bundle.ordered import WORKERS, OrderedPipeline
from appliance.bundle.sink import MemorySink, NullSink, Sink
from appliance.bundle.writebehind import WriteBehind

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Policy:
    """What this device accepts; the installer builds it from the keyring and the state file.

    ``product``/``target`` None skip that check (diagnostics only: the installer always sets
    them). ``trusted_now`` is a Unix time only when the clock is trusted (Decision 6), else None
    and expiry is not enforced. ``min_security_version`` is the committed slot's (Decision 5).
    """

    keyring: Keyring
    product: str | None
    target: str | None
    min_security_version: int = 0
    trusted_now: int | None = None
    limits: Limits = field(default_factory=Limits)


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
            f"{policy.min_security_version} (anti-rollback); use a newer bundle"
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
            f"{source}: first member is {head.name!r}, expected {MANIFEST_NAME}"
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
            f"{source}: second member is {head.name!r}, expected {SIGNATURE_NAME}"
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


class VerifiedBundle:
    """An authenticated manifest over a stream positioned at its first payload."""

    def __init__(
        self, manifest: Manifest, manifest_bytes: bytes, signature: bytes,
        reader: tarstream.StreamReader, limits: Limits,
    ) -> None:  # fmt: skip
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self.signature = signature
        self._reader = reader
        self._limits = limits
        self._next = 0
        self._finished = False

    @property
    def key_id(self) -> str:
        """Id of the key that signed this bundle."""
        return self.manifest.key_id

    def stream_payload(
        self,
        name: str,
        sink: Sink,
        progress: Progress | None = None,
        base: BaseSlot | None = None,
    ) -> None:
        """Verify payload ``name`` chunk by chunk into ``sink``, then ``sink.flush()``.

        Payloads before ``name`` that were not streamed yet are verified and discarded. On error
        the sink holds only chunks that were verified (a prefix of the slot image). A ``delta``
        payload needs ``base`` (the active slot): its whole digest is checked against the signed
        ``base`` before any chunk is read, and each chunk is rebuilt from it, then verified.
        """
        names = [p.name for p in self.manifest.payloads]
        if name not in names:
            raise KeyError(f"bundle has no payload {name!r} (has: {', '.join(names)})")
        index = names.index(name)
        if index < self._next:
            raise PayloadOrderError(
                f"payload {name!r} was already read; a bundle stream is read once, in order"
            )
        payload = self.manifest.payloads[index]
        if payload.kind == KIND_DELTA:
            if base is None:
                raise MissingBaseError(
                    f"payload {name!r} is a delta: it needs the active slot it applies to"
                )
            if payload.base is None:  # the manifest schema already requires it
                raise MissingBaseError(f"payload {name!r} names no base")
            base.check(payload.base.size, payload.base.sha256)  # before any write
        while self._next < index:
            self._consume(self.manifest.payloads[self._next], NullSink(), None)
        self._consume(payload, sink, progress, base)

    def read_keyring(self) -> bytes:
        """The verified bytes of the bundle's ``keyring`` payload (KeyError if it has none)."""
        for p in self.manifest.payloads:
            if p.kind == KIND_KEYRING:
                sink = MemorySink(self._limits.max_keyring_size)
                self.stream_payload(p.name, sink)
                return bytes(sink.buffer)
        raise KeyError("bundle carries no keyring payload")

    def finish(self) -> None:
        """Verify any payloads not yet read, then the end-of-archive marker and end of stream."""
        if self._finished:
            return
        while self._next < len(self.manifest.payloads):
            self._consume(self.manifest.payloads[self._next], NullSink(), None)
        head = tarstream.read_header(
            self._reader, "the end-of-archive marker", self._limits.max_payload_size
        )
        if head is not None:
            self._refuse_member(head.name, "the end of the archive")
        tarstream.expect_eof(self._reader)
        self._finished = True

    def verify_all(self, progress: Progress | None = None) -> None:
        """Read and verify every payload (discarding the bytes) and the archive end."""
        for p in self.manifest.payloads[self._next :]:
            self._consume(p, NullSink(), progress)
        self.finish()

    # -- internals ----------------------------------------------------------------------------

    def _refuse_member(self, got: str, expected: str) -> None:
        seen = {
            MANIFEST_NAME,
            SIGNATURE_NAME,
            *(p.name for p in self.manifest.payloads[: self._next]),
        }
        listed = {p.name for p in self.manifest.payloads}
        if got in seen:
            raise DuplicateMemberError(f"member {got!r} appears twice (expected {expected})")
        if got in listed:
            raise UnexpectedMemberError(
                f"member {got!r} is out of the signed order (expected {expected})"
            )
        raise ExtraMemberError(
            f"member {got!r} is not described by the signed manifest (expected {expected})"
        )

    def _consume(
        self, p: Payload, sink: Sink, progress: Progress | None, base: BaseSlot | None = None
    ) -> None:
        reader = self._reader
        head = tarstream.read_header(reader, p.name, self._limits.max_payload_size)
        if head is None:
            raise MissingMemberError(
                f"the archive ends before payload {p.name!r} listed in the manifest"
            )
        if head.name != p.name:
            self._refuse_member(head.name, f"payload {p.name!r}")
        if head.size != p.size:
            raise SizeMismatchError(
                f"member {p.name!r} has {head.size} bytes; the signed manifest says {p.size}"
            )
        self._next += 1  # consumed from here on, even if it fails
        writer = WriteBehind(sink)
        try:
            self._verify_chunks(p, writer, progress, base)
        except BaseException:
            writer.abandon()
            raise
        writer.close()
        tarstream.read_padding(reader, p.size, p.name)
        sink.flush()

    def _verify_chunks(
        self, p: Payload, writer: WriteBehind, progress: Progress | None, base: BaseSlot | None
    ) -> None:
        """Read, verify (and decompress or rebuild) each chunk; hand only verified ones on.

        Chunks (full and delta) are verified on worker threads (:mod:`~.ordered`) while the
        next chunk is read; results reach ``writer`` in order, each only after it and all before
        it were verified. A delta read without ``base`` (discarded or ``verify_all``)
        has only its wire digests checked: its image digests need the base slot.
        """
        reader = self._reader
        check = _ChunkCheck(p, self.manifest.chunk_size, base)
        # Delta chunks too: BaseSlot.rebuild reads the base with positioned reads (thread-safe).
        pipeline: OrderedPipeline[tuple[int, bytes | None]] = OrderedPipeline(WORKERS)
        offset = 0

        def hand_on(results: Iterator[tuple[int, bytes | None]]) -> None:
            nonlocal offset
            for size, data in results:
                if data is not None:
                    writer.write(offset, data)
                offset += size
                if progress is not None and data is not None:
                    progress(offset, p.image.size)

        try:
            for i, wire in enumerate(p.chunks):
                try:
                    data = reader.read_exact(wire.size, f"chunk {i} of {p.name}")
                except Exception:
                    hand_on(pipeline.drain())  # what was read before the break, in order
                    raise
                hand_on(pipeline.submit(check, i, data, reader.offset - wire.size))
            hand_on(pipeline.drain())
        finally:
            pipeline.close()


class _ChunkCheck:
    """Verify one chunk of payload ``p``: wire digest, then the image bytes (thread-safe)."""

    def __init__(self, p: Payload, chunk_size: int, base: BaseSlot | None) -> None:
        self.p = p
        self.chunk_size = chunk_size
        self.base = base
        self.base_size = p.base.size if p.base is not None else 0
        self._local = threading.local()  # a zstd decompression context is not thread-safe

    def __call__(self, i: int, data: bytes, at: int) -> tuple[int, bytes | None]:
        """(image bytes this chunk covers, its verified bytes or None if not rebuilt)."""
        p = self.p
        wire, image_digest = p.chunks[i], p.image.chunks[i]
        if hashlib.sha256(data).hexdigest() != wire.sha256:
            raise ChunkDigestError(
                f"payload {p.name!r} chunk {i} (bundle byte {at}) "
                "does not match its signed sha256: corrupt or tampered; none of it was written"
            )
        expect = min(self.chunk_size, p.image.size - i * self.chunk_size)
        if p.kind == KIND_DELTA:
            if self.base is None:
                return expect, None
            image = self.base.rebuild(data, expect, self.base_size, f"{p.name} chunk {i}")
            if hashlib.sha256(image).hexdigest() != image_digest:
                raise ChunkDigestError(
                    f"payload {p.name!r} chunk {i} rebuilds to bytes that do not match its "
                    "signed sha256: the base slot or the delta is damaged; nothing of it "
                    "was written"
                )
            return expect, image
        elif p.compression == "zstd":
            decompress = getattr(self._local, "decompress", None)
            if decompress is None:
                decompress = self._local.decompress = _zstd_decompressor()
            data = decompress(data, expect, f"{p.name} chunk {i}")
            if hashlib.sha256(data).hexdigest() != image_digest:
                raise ChunkDigestError(f"payload {p.name!r} chunk {i} decompresses to wrong bytes")
        return expect, data


def _zstd_decompressor() -> Callable[[bytes, int, str], bytes]:
    """A function decompressing one independent zstd frame to exactly ``size`` bytes."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()

    def run(frame: bytes, size: int, where: str) -> bytes:
        try:
            declared = zstandard.frame_content_size(frame)
            if declared != size:
                raise DecompressionError(
                    f"{where}: zstd frame declares {declared} bytes, expected {size}"
                )
            out: Any = dctx.decompress(frame, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise DecompressionError(f"{where}: zstd frame does not decompress: {exc}") from None
        if len(out) != size:
            raise DecompressionError(f"{where}: decompressed to {len(out)} bytes, expected {size}")
        return bytes(out)

    return run
