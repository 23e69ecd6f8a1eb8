"""Chunks verified on worker threads still reach the sink in order, and only verified ones."""

from __future__ import annotations

import io
import random
import threading
import time

import pytest

from appliance.bundle import errors, open_bundle
from appliance.bundle.ordered import OrderedPipeline

from .kit import CHUNK, RecordingSink, image_bytes, make_bundle, policy


def test_results_leave_in_call_order_whatever_finishes_first() -> None:
    rng = random.Random(7)
    delays = [rng.random() / 200 for _ in range(40)]
    seen_threads: set[str] = set()

    def work(i: int) -> int:
        time.sleep(delays[i])
        seen_threads.add(threading.current_thread().name)
        return i

    pipeline: OrderedPipeline[int] = OrderedPipeline(workers=2, depth=3)
    out: list[int] = []
    try:
        for i in range(40):
            out.extend(pipeline.submit(work, i))
        out.extend(pipeline.drain())
    finally:
        pipeline.close()
    assert out == list(range(40))
    assert all(name.startswith("bundle-verify") for name in seen_threads)


def test_the_first_failure_in_order_raises_and_nothing_after_it_is_handed_on() -> None:
    def work(i: int) -> int:
        if i in (5, 7):  # 7 may finish first; 5 must be the one reported
            if i == 5:
                time.sleep(0.02)
            raise ValueError(f"chunk {i}")
        return i

    pipeline: OrderedPipeline[int] = OrderedPipeline(workers=2, depth=3)
    out: list[int] = []
    with pytest.raises(ValueError, match="chunk 5"):
        try:
            for i in range(10):
                out.extend(pipeline.submit(work, i))
            out.extend(pipeline.drain())
        finally:
            pipeline.close()
    assert out == [0, 1, 2, 3, 4]


def test_inline_when_no_workers() -> None:
    pipeline: OrderedPipeline[str] = OrderedPipeline(workers=0)
    assert list(pipeline.submit(lambda: threading.current_thread().name)) == [
        threading.current_thread().name
    ]
    pipeline.close()


def _stream(bundle: bytes) -> tuple[RecordingSink, BaseException | None]:
    sink = RecordingSink(armed=True)
    verified = open_bundle(io.BytesIO(bundle), policy())
    try:
        verified.stream_payload(verified.manifest.payloads[0].name, sink)
    except errors.BundleError as exc:
        return sink, exc
    return sink, None


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_a_bad_middle_chunk_leaves_exactly_the_verified_prefix(compression: str) -> None:
    image = image_bytes(CHUNK * 20 + 100)
    bundle = bytearray(make_bundle(image, compression=compression))
    good = _stream(bytes(bundle))
    assert good[1] is None and good[0].image() == image
    # Flip a byte inside chunk 9 of the payload as stored (raw or zstd frames, in order).
    stored = _stored_chunks(bytes(bundle), image)
    sizes = [len(c) for c in stored]
    start = bytes(bundle).index(stored[0])
    bundle[start + sum(sizes[:9]) + sizes[9] // 2] ^= 0x40
    sink, exc = _stream(bytes(bundle))
    assert isinstance(exc, errors.ChunkDigestError) and "chunk 9 " in str(exc)
    assert [offset for offset, _ in sink.writes] == [i * CHUNK for i in range(9)]
    assert b"".join(data for _, data in sink.writes) == image[: 9 * CHUNK]


def test_a_truncated_stream_still_hands_on_what_came_before() -> None:
    image = image_bytes(CHUNK * 20)
    bundle = make_bundle(image)
    start = bundle.index(image[:CHUNK])
    sink, exc = _stream(bundle[: start + 12 * CHUNK + 10])
    assert isinstance(exc, errors.TruncatedBundleError)
    assert b"".join(data for _, data in sink.writes) == image[: 12 * CHUNK]


def _stored_chunks(bundle: bytes, image: bytes) -> list[bytes]:
    """The payload's chunks as stored in the bundle (sizes from the signed manifest)."""
    verified = open_bundle(io.BytesIO(bundle), policy())
    payload = verified.manifest.payloads[0]
    zstd_magic = b"\x28\xb5\x2f\xfd"
    at = bundle.index(zstd_magic if payload.compression == "zstd" else image[:CHUNK])
    out = []
    for chunk in payload.chunks:
        out.append(bundle[at : at + chunk.size])
        at += chunk.size
    return out
