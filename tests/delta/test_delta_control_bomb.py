"""#17 harden: a signed delta chunk cannot decode to millions of controls (control bomb).

Before, the device allowed one control per output byte: an 8.7 KB signed chunk decoded to
16.7 M controls (+1.4 GiB RSS). Now the bound is the encoder's (``max_controls``: one per
``CONTROL_BYTES`` output bytes, plus one) and it is checked before anything is decompressed.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path

import pytest

from appliance.bundle import PayloadSource, canonical, open_bundle, write_bundle
from appliance.bundle.delta import CONTROL_BYTES, DeltaError, Extent, encode_chunk, max_controls
from appliance.bundle.delta_apply import BaseSlot, parse_chunk
from tests.bundle.kit import (
    CREATED,
    KEY,
    PRODUCT,
    TARGET,
    Member,
    RecordingSink,
    assemble,
    policy,
    split_members,
)

from .kit import CHUNK, image_pair


def bomb(out_len: int, offset: int, n_ctrl: int) -> bytes:
    """A chunk that rebuilds base[offset:offset+out_len] with n_ctrl - 1 no-op controls."""
    controls = [(out_len, 0, 0)] + [(0, 0, 0)] * (n_ctrl - 1)
    return encode_chunk([Extent(offset, out_len)], controls, bytes(out_len), b"", level=3)


def test_parser_refuses_more_controls_than_the_encoder_makes_before_decoding() -> None:
    out_len = 1 << 20
    wire = bomb(out_len, 0, out_len + 1)  # the old limit: one control per output byte
    assert len(wire) < 64 << 10  # a few KB on the wire
    tracemalloc.start()
    try:
        with pytest.raises(DeltaError) as caught:
            parse_chunk(wire, out_len, 2 * out_len, "delta chunk 0")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        f"delta chunk 0: {out_len + 1} controls for {out_len} output bytes; the format allows "
        f"at most {out_len // CONTROL_BYTES + 1} (one per {CONTROL_BYTES} bytes): refused "
        "before decoding"
    )
    assert peak < 1 << 20  # nothing was decompressed (the body would be 25 MiB)
    at_limit = bomb(out_len, 0, max_controls(out_len))
    assert len(parse_chunk(at_limit, out_len, 2 * out_len, "ok").controls) == max_controls(out_len)


def _signed_delta_with_bomb(tmp_path: Path) -> tuple[bytes, Path, bytes]:
    base_bytes, _new = image_pair(seed=5)
    base = tmp_path / "base.img"
    base.write_bytes(base_bytes)
    new = tmp_path / "new.img"
    new.write_bytes(base_bytes)  # rebuild the base itself: every chunk is R as it is
    out = io.BytesIO()
    write_bundle(
        out, key=KEY, product=PRODUCT, targets=[TARGET], version="2.0.0", security_version=5,
        created=CREATED, payloads=[PayloadSource.delta(new, base)], chunk_size=CHUNK,
    )  # fmt: skip
    members = split_members(out.getvalue())
    manifest = canonical.decode(members[0].data)
    payload = manifest["payloads"][0]
    wires = []
    for i in range(len(payload["chunks"])):
        size = min(CHUNK, len(base_bytes) - i * CHUNK)
        wires.append(bomb(size, i * CHUNK, size + 1 if i == 0 else 1))
    payload["chunks"] = [{"sha256": hashlib.sha256(w).hexdigest(), "size": len(w)} for w in wires]
    payload["size"] = sum(len(w) for w in wires)
    raw = canonical.encode(manifest)
    bundle = assemble(
        [Member("manifest.json", raw), Member("manifest.sig", KEY.sign(raw)),
         Member(members[2].name, b"".join(wires))]
    )  # fmt: skip
    return bundle, base, base_bytes


def test_signed_delta_control_bomb_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    bundle, base, _image = _signed_delta_with_bomb(tmp_path)
    verified = open_bundle(io.BytesIO(bundle), policy())  # authentic: signed by a trusted key
    sink = RecordingSink(armed=True)
    with BaseSlot(base) as slot, pytest.raises(DeltaError, match="refused before decoding"):
        verified.stream_payload(verified.manifest.payloads[0].name, sink, base=slot)
    assert sink.writes == []  # the bomb is chunk 0: not one byte reached the slot


def test_encoder_output_stays_within_the_bound(tmp_path: Path) -> None:
    from appliance.bundle.delta_encode import BaseIndex, DeltaEncoder

    base, new = image_pair(seed=3)
    path = tmp_path / "base.img"
    path.write_bytes(base)
    encoder = DeltaEncoder(BaseIndex(base, BaseIndex.load(path).blocks), CHUNK, level=3)
    for i in range(0, len(new), CHUNK):
        chunk = new[i : i + CHUNK]
        wire = encoder.encode(i // CHUNK, chunk)
        assert int.from_bytes(wire[8:12], "little") <= max_controls(len(chunk))
