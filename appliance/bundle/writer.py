"""Write and sign a bundle: manifest.json, manifest.sig, then the payloads, as canonical ustar.

Zstd payloads are compressed chunk by chunk (each chunk an independent frame, so chunk N is
verifiable and decompressible alone) into a spool file, because the manifest that lists their
digests must come first. Uncompressed payloads are hashed, then re-read and re-checked.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.bundle import tarstream
from appliance.bundle.errors import BundleError
from appliance.bundle.keyring import key_id_for
from appliance.bundle.manifest import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    KIND_DELTA,
    KIND_FULL,
    KIND_KEYRING,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Base,
    Image,
    Limits,
    Manifest,
    Payload,
    WireChunk,
    parse_manifest,
)


class BundleWriteError(BundleError):
    """The writer could not build a bundle (source changed, unreadable or invalid)."""


@dataclass(frozen=True)
class PayloadSource:
    """One payload to put in a bundle: a file (slot image) or bytes (a keyring)."""

    name: str
    kind: str
    source: Path | bytes
    compression: str = "zstd"
    base: Path | None = None  # kind "delta": the slot image the delta applies to

    @classmethod
    def slot_image(
        cls, path: Path, name: str = "rootfs.img", compression: str = "zstd"
    ) -> PayloadSource:
        """A full slot image; the member is called ``name`` (+ ``.zst`` when compressed)."""
        suffix = ".zst" if compression == "zstd" else ""
        return cls(name=name + suffix, kind=KIND_FULL, source=Path(path), compression=compression)

    @classmethod
    def delta(cls, path: Path, base: Path, name: str = "rootfs.delta") -> PayloadSource:
        """A delta (method ``ekdelta2``) rebuilding the slot image ``path`` from ``base``."""
        return cls(name=name, kind=KIND_DELTA, source=Path(path), compression="none", base=base)

    @classmethod
    def keyring(cls, data: bytes, name: str = "keyring.json") -> PayloadSource:
        """A keyring rotation payload (canonical keyring JSON, uncompressed)."""
        return cls(name=name, kind=KIND_KEYRING, source=data, compression="none")


def _chunks(src: Path | bytes, chunk_size: int) -> Iterator[bytes]:
    if isinstance(src, bytes):
        for start in range(0, len(src), chunk_size):
            yield src[start : start + chunk_size]
        return
    with open(src, "rb") as handle:
        while chunk := handle.read(chunk_size):
            yield chunk


class _Prepared:
    """A payload's manifest entry and where its wire bytes come from."""

    def __init__(self, entry: Payload, spool: BinaryIO | None, src: Path | bytes) -> None:
        self.entry = entry
        self.spool = spool
        self.src = src


def _prepare(
    item: PayloadSource,
    chunk_size: int,
    level: int,
    spool_dir: Path | None,
    progress: Callable[[int], None] | None,
) -> _Prepared:
    if item.kind == KIND_DELTA:
        return _prepare_delta(item, chunk_size, level, spool_dir, progress)
    whole = hashlib.sha256()
    image_digests: list[str] = []
    wire: list[WireChunk] = []
    spool: BinaryIO | None = None
    cctx = None
    if item.compression == "zstd":
        import zstandard

        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
        spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by write_bundle
    elif item.compression != "none":
        raise BundleWriteError(
            f"payload {item.name}: compression {item.compression!r} unknown (none, zstd)"
        )
    size = 0
    try:
        for chunk in _chunks(item.source, chunk_size):
            whole.update(chunk)
            if progress is not None:
                progress(len(chunk))
            digest = hashlib.sha256(chunk).hexdigest()
            image_digests.append(digest)
            size += len(chunk)
            if cctx is not None and spool is not None:
                frame = cctx.compress(chunk)
                spool.write(frame)
                wire.append(WireChunk(size=len(frame), sha256=hashlib.sha256(frame).hexdigest()))
            else:
                wire.append(WireChunk(size=len(chunk), sha256=digest))
    except OSError as exc:
        if spool is not None:
            spool.close()
        raise BundleWriteError(
            f"cannot read payload {item.name} from {item.source!r:.80}: {exc}"
        ) from None
    entry = Payload(
        name=item.name,
        kind=item.kind,
        compression=item.compression,
        size=sum(c.size for c in wire),
        chunks=wire,
        image=Image(size=size, sha256=whole.hexdigest(), chunks=image_digests),
    )
    if spool is not None:
        spool.seek(0)
    return _Prepared(entry, spool, item.source)


def _prepare_delta(
    item: PayloadSource,
    chunk_size: int,
    level: int,
    spool_dir: Path | None,
    progress: Callable[[int], None] | None,
) -> _Prepared:
    """Encode a delta chunk by chunk into a spool file (delta_encode.py; build host only)."""
    from appliance.bundle.delta import METHOD
    from appliance.bundle.delta_encode import image_digest, iter_delta_chunks

    if item.base is None or not isinstance(item.source, Path):
        raise BundleWriteError(f"payload {item.name}: a delta needs a new image file and a base")
    whole = hashlib.sha256()
    image_digests: list[str] = []
    wire: list[WireChunk] = []
    spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by write_bundle
    size = 0
    try:
        base_size, base_sha = image_digest(item.base)
        for chunk, frame in iter_delta_chunks(item.base, item.source, chunk_size, max(level, 19)):
            whole.update(chunk)
            image_digests.append(hashlib.sha256(chunk).hexdigest())
            size += len(chunk)
            spool.write(frame)
            wire.append(WireChunk(size=len(frame), sha256=hashlib.sha256(frame).hexdigest()))
            if progress is not None:
                progress(len(chunk))
    except OSError as exc:
        spool.close()
        raise BundleWriteError(f"cannot read delta input for {item.name}: {exc}") from None
    except BaseException:
        spool.close()
        raise
    entry = Payload(
        name=item.name,
        kind=KIND_DELTA,
        compression="none",
        size=sum(c.size for c in wire),
        chunks=wire,
        image=Image(size=size, sha256=whole.hexdigest(), chunks=image_digests),
        base=Base(size=base_size, sha256=base_sha),
        method=METHOD,
    )
    spool.seek(0)
    return _Prepared(entry, spool, item.source)


def _copy_member(out: BinaryIO, prep: _Prepared, chunk_size: int) -> None:
    entry = prep.entry
    out.write(tarstream.build_header(entry.name, entry.size))
    if prep.spool is not None:
        for wire in entry.chunks:
            out.write(prep.spool.read(wire.size))
    else:
        for i, chunk in enumerate(_chunks(prep.src, chunk_size)):
            if (
                i >= len(entry.chunks)
                or hashlib.sha256(chunk).hexdigest() != entry.chunks[i].sha256
            ):
                raise BundleWriteError(
                    f"payload {entry.name} changed while the bundle was written; retry"
                )
            out.write(chunk)
    out.write(bytes(tarstream.padding(entry.size)))


def write_bundle(
    out: BinaryIO,
    *,
    key: Ed25519PrivateKey,
    product: str,
    targets: list[str],
    version: str,
    security_version: int,
    created: int,
    payloads: list[PayloadSource],
    expires: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    zstd_level: int = 3,
    spool_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    allow_downgrade: bool = False,
) -> Manifest:
    """Write a signed bundle to ``out`` and return its manifest.

    The manifest is validated with the reader's own rules before anything is written.
    ``progress(n)`` is called with the byte count of each image chunk hashed/compressed.
    A ``keyring`` payload is placed before the slot image, so that the installer validates a
    rotation before it touches the target slot. ``allow_downgrade`` signs consent to install
    this release over a newer one of the same ``security_version``.
    """
    payloads = sorted(payloads, key=lambda p: p.kind != "keyring")
    raw_pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    prepared: list[_Prepared] = []
    try:
        for item in payloads:
            prepared.append(_prepare(item, chunk_size, zstd_level, spool_dir, progress))
        manifest = Manifest(
            format=FORMAT_VERSION,
            product=product,
            targets=list(targets),
            version=version,
            security_version=security_version,
            created=created,
            expires=expires,
            key_id=key_id_for(raw_pub),
            chunk_size=chunk_size,
            payloads=[p.entry for p in prepared],
            allow_downgrade=allow_downgrade,
        )
        data = manifest.to_bytes()
        try:
            parse_manifest(data, Limits())
        except BundleError as exc:
            raise BundleWriteError(f"refusing to write an invalid bundle: {exc}") from None
        signature = key.sign(data)
        out.write(tarstream.build_header(MANIFEST_NAME, len(data)))
        out.write(data)
        out.write(bytes(tarstream.padding(len(data))))
        out.write(tarstream.build_header(SIGNATURE_NAME, len(signature)))
        out.write(signature)
        out.write(bytes(tarstream.padding(len(signature))))
        for prep in prepared:
            _copy_member(out, prep, chunk_size)
        out.write(tarstream.END_OF_ARCHIVE)
    finally:
        for prep in prepared:
            if prep.spool is not None:
                prep.spool.close()
    return manifest
