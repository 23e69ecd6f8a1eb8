"""Stream the payloads of an authenticated bundle: each chunk verified before the sink sees it.

:func:`appliance.bundle.reader.open_bundle` authenticates the manifest and returns a
:class:`VerifiedBundle` positioned at the first payload. Within a payload each chunk reaches
the :class:`~appliance.bundle.sink.Sink` only after its wire and image digests matched; chunks
are verified (decompressed or, for a delta, rebuilt from the base slot) on worker threads
(:mod:`appliance.bundle.ordered`) and written in order from one more
(:mod:`appliance.bundle.writebehind`). Memory stays O(chunk x depth).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from appliance.bundle import tarstream
from appliance.bundle.delta import MissingBaseError
from appliance.bundle.delta_apply import BaseSlot
from appliance.bundle.errors import (
    ChunkDigestError,
    DecompressionError,
    DuplicateMemberError,
    ExtraMemberError,
    MissingMemberError,
    PayloadOrderError,
    SizeMismatchError,
    UnexpectedMemberError,
)
from appliance.bundle.manifest import (
    KIND_DELTA,
    KIND_KEYRING,
    MANIFEST_NAME,
    SIGNATURE_NAME,
    Limits,
    Manifest,
    Payload,
)
from appliance.bundle.ordered import (
    WORKERS,
    OrderedPipeline,
    release_delta_memory,
    reuse_chunk_memory,
)
from appliance.bundle.sink import MemorySink, NullSink, Sink
from appliance.bundle.writebehind import Inline, WriteBehind, writer_for

Progress = Callable[[int, int], None]


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
        ``base`` before any chunk is read, and each chunk is rebuilt from it, then verified. If
        the caller began that check with ``base.start_check`` it runs meanwhile instead: this
        returns only after it passed and raises ``DeltaBaseError`` if it did not, also when a
        chunk failed first (every chunk written meanwhile matched its signed digest).
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
            want = (payload.base.size, payload.base.sha256)
            if not base.checking(*want):
                base.check(*want)  # before any write
        while self._next < index:
            self._consume(self.manifest.payloads[self._next], NullSink(), None)
        if base is None or payload.kind != KIND_DELTA or payload.base is None:
            self._consume(payload, sink, progress, base)
            return
        # The base check may still run (BaseSlot.start_check): the chunks written meanwhile were
        # each verified against their signed digests; the stream returns only once it passed,
        # and a wrong base is refused as such, also when one of its chunks failed first.
        try:
            self._consume(payload, sink, progress, base)
        except Exception:
            base.check(payload.base.size, payload.base.sha256)  # DeltaBaseError wins
            raise
        base.check(payload.base.size, payload.base.sha256)

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
        writer = writer_for(sink)
        try:
            self._verify_chunks(p, writer, progress, base)
        except BaseException:
            writer.abandon()
            raise
        writer.close()
        tarstream.read_padding(reader, p.size, p.name)
        sink.flush()

    def _verify_chunks(
        self,
        p: Payload,
        writer: WriteBehind | Inline,
        progress: Progress | None,
        base: BaseSlot | None,
    ) -> None:
        """Read, verify (and decompress or rebuild) each chunk; hand only verified ones on.

        Chunks (full and delta) are verified on worker threads (:mod:`~.ordered`) while the
        next chunk is read; results reach ``writer`` in order, each only after it and all before
        it were verified. A delta read without ``base`` (discarded or ``verify_all``)
        has only its wire digests checked: its image digests need the base slot.
        """
        reader = self._reader
        if p.kind != KIND_DELTA:  # (the delta path's memory was tuned without it)
            reuse_chunk_memory()
        else:
            release_delta_memory()
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
