"""Delta bundles: round trip, wrong base, corrupt or forged deltas, manifest rules."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from appliance.bundle import FileSink, open_bundle
from appliance.bundle.delta import (
    MAX_REFERENCE,
    DeltaBaseError,
    DeltaError,
    Extent,
    MissingBaseError,
    encode_chunk,
)
from appliance.bundle.delta_apply import BaseSlot, parse_chunk
from appliance.bundle.errors import (
    ChunkDigestError,
    ManifestSchemaError,
    UnsupportedPayloadError,
)
from tests.bundle.kit import RecordingSink, manifest_of, policy, resign, split_members

from .kit import CHUNK, delta_bundle, write_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    tmp = tmp_path_factory.mktemp("delta")
    base, new = write_pair(tmp)
    return base, new, delta_bundle(base, new)


def stream(bundle: bytes, base: Path | None, sink: RecordingSink) -> None:
    verified = open_bundle(io.BytesIO(bundle), policy())
    sink.armed = True
    name = verified.manifest.payloads[0].name
    with BaseSlot(base) if base is not None else _nullctx() as slot:
        verified.stream_payload(name, sink, base=slot)
    verified.finish()


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_roundtrip_rebuilds_new_image_and_is_small(
    pair: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    base, new, bundle = pair
    m = manifest_of(bundle)
    payload = m["payloads"][0]
    assert payload["kind"] == "delta" and payload["method"] == "ekdelta2"
    assert payload["base"]["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert payload["image"]["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()
    # The new image is ~1 MiB; what changed is ~50 KiB (20 KiB of it random).
    assert payload["size"] < 80_000 < new.stat().st_size
    out = tmp_path / "slot_b"
    out.write_bytes(b"")
    verified = open_bundle(io.BytesIO(bundle), policy())
    with FileSink(out) as sink, BaseSlot(base) as slot:
        verified.stream_payload(payload["name"], sink, base=slot)
    verified.finish()
    assert out.read_bytes() == new.read_bytes()


def test_base_is_a_block_device_sized_larger_than_the_image(
    pair: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    """A slot partition is larger than the image in it: only base.size bytes count."""
    base, new, bundle = pair
    slot = tmp_path / "slot_a"
    slot.write_bytes(base.read_bytes() + b"\xff" * 10000)
    sink = RecordingSink()
    stream(bundle, slot, sink)
    assert sink.image() == new.read_bytes()


def test_wrong_base_is_refused_before_any_write(
    pair: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    base, _new, bundle = pair
    other = tmp_path / "other"
    data = bytearray(base.read_bytes())
    data[5000] ^= 1
    other.write_bytes(bytes(data))
    sink = RecordingSink()
    with pytest.raises(DeltaBaseError, match="install the full bundle"):
        stream(bundle, other, sink)
    assert sink.writes == []
    assert DeltaBaseError.exit_code == 4  # a policy refusal


def test_missing_base_is_refused(pair: tuple[Path, Path, bytes]) -> None:
    sink = RecordingSink()
    with pytest.raises(MissingBaseError):
        stream(pair[2], None, sink)
    assert sink.writes == []


def test_verify_all_without_base_checks_wire_digests(pair: tuple[Path, Path, bytes]) -> None:
    open_bundle(io.BytesIO(pair[2]), policy()).verify_all()
    bad = bytearray(pair[2])
    bad[-2000] ^= 0x40  # inside the last delta chunk
    with pytest.raises(ChunkDigestError):
        open_bundle(io.BytesIO(bytes(bad)), policy()).verify_all()


def test_corrupt_delta_chunk_is_refused_and_only_verified_bytes_written(
    pair: tuple[Path, Path, bytes],
) -> None:
    base, new, bundle = pair
    members = split_members(bundle)
    start = bundle.index(members[2].data)
    bad = bytearray(bundle)
    bad[start + len(members[2].data) // 2] ^= 0x01
    sink = RecordingSink()
    with pytest.raises(ChunkDigestError):
        stream(bytes(bad), base, sink)
    image = new.read_bytes()
    for offset, data in sink.writes:  # a verified prefix, never anything else
        assert image[offset : offset + len(data)] == data


def _forge_chunk(bundle: bytes, index: int, wire: bytes) -> bytes:
    """Replace delta chunk ``index`` and re-sign with the trusted key (a compromised builder)."""
    m = manifest_of(bundle)
    members = split_members(bundle)
    chunks = m["payloads"][0]["chunks"]
    offsets = [sum(c["size"] for c in chunks[:i]) for i in range(len(chunks))]
    data = members[2].data
    start = offsets[index]
    new_data = data[:start] + wire + data[start + chunks[index]["size"] :]

    def edit(value: dict) -> None:  # type: ignore[type-arg]
        p = value["payloads"][0]
        p["chunks"][index] = {"sha256": hashlib.sha256(wire).hexdigest(), "size": len(wire)}
        p["size"] = len(new_data)

    signed = split_members(resign(bundle, edit))
    signed[2].data = new_data
    from tests.bundle.kit import assemble

    return assemble(signed)


def test_forged_delta_with_valid_wire_digest_fails_image_digest(
    pair: tuple[Path, Path, bytes],
) -> None:
    base, _new, bundle = pair
    # A well-formed chunk that rebuilds the wrong bytes: copy the base's first chunk.
    wire = encode_chunk([Extent(0, CHUNK)], [(CHUNK, 0, 0)], bytes(CHUNK), b"")
    forged = _forge_chunk(bundle, 5, wire)
    sink = RecordingSink()
    with pytest.raises(ChunkDigestError, match="chunk 5 rebuilds"):
        stream(forged, base, sink)
    assert all(offset < 5 * CHUNK for offset, _ in sink.writes)


def test_forged_delta_with_bad_structure_is_a_delta_error(
    pair: tuple[Path, Path, bytes],
) -> None:
    base, _new, bundle = pair
    size = base.stat().st_size
    wire = encode_chunk([Extent(size - 100, 4096)], [(CHUNK, 0, 0)], bytes(CHUNK), b"")
    sink = RecordingSink()
    with pytest.raises(DeltaError, match="outside the base"):
        stream(_forge_chunk(bundle, 2, wire), base, sink)
    assert all(offset < 2 * CHUNK for offset, _ in sink.writes)


@pytest.mark.parametrize(
    ("extents", "controls", "diff", "extra", "match"),
    [
        ([Extent(0, 4096)], [(8192, 0, 0)], bytes(8192), b"", "reads reference"),
        ([Extent(0, 4096)], [(4096, 0, 0)], bytes(4096), b"", "EKD0 chunk produce"),
        ([], [(0, 100, 0)], b"", bytes(100), "controls produce"),
        ([Extent(0, 4096)] * 5000, [(0, 8192, 0)], b"", bytes(8192), "do not add up"),
        ([Extent(0, MAX_REFERENCE // 2 + 4096)] * 2, [(0, 8192, 0)], b"", bytes(8192), "exceeds"),
        ([Extent(0, 4096)], [(4096, 0, -5000), (4096, 0, 0)], bytes(8192), b"", "reads reference"),
    ],
)
def test_malformed_chunks_are_named(
    extents: list[Extent],
    controls: list[tuple[int, int, int]],
    diff: bytes,
    extra: bytes,
    match: str,
    tmp_path: Path,
) -> None:
    base = tmp_path / "base"
    base.write_bytes(bytes(MAX_REFERENCE))
    wire = encode_chunk(extents, controls, diff, extra, level=1)
    with BaseSlot(base) as slot, pytest.raises(DeltaError, match=match):
        slot.rebuild(wire, 8192, MAX_REFERENCE, "test chunk")


def test_garbage_and_truncation(tmp_path: Path) -> None:
    for wire in (
        b"",
        b"EKD1",
        b"XXXX" + bytes(12),
        encode_chunk([], [(0, 10, 0)], b"", b"x" * 10)[:-3],
    ):
        with pytest.raises(DeltaError):
            parse_chunk(wire, 10, 1000, "test")


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda p: p.pop("base"), ManifestSchemaError),
        (lambda p: p.__setitem__("method", "xdelta3"), UnsupportedPayloadError),
        (lambda p: p.__setitem__("method", "ekdelta3"), UnsupportedPayloadError),
        (lambda p: p.__setitem__("compression", "zstd"), ManifestSchemaError),
        (lambda p: p["base"].__setitem__("sha256", "00"), ManifestSchemaError),
        (lambda p: p.__setitem__("kind", "full"), ManifestSchemaError),
    ],
)
def test_manifest_rules_for_delta(
    pair: tuple[Path, Path, bytes], edit: object, error: type
) -> None:
    bundle = resign(pair[2], lambda m: edit(m["payloads"][0]))  # type: ignore[operator]
    with pytest.raises(error):
        open_bundle(io.BytesIO(bundle), policy())
