"""The on-disk telemetry buffer: order, bound with a drop counter, restarts, torn writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.telemetry.telemetry_buffer import TelemetryBuffer, TelemetryBufferError


def rec(i: int, pad: int = 0) -> bytes:
    return json.dumps({"frame": i, "pad": "x" * pad}).encode()


def drain(buf: TelemetryBuffer, batch: int = 7) -> list[int]:
    out: list[int] = []
    while not buf.empty():
        records, cursor = buf.peek(batch)
        out += [json.loads(r)["frame"] for r in records]
        buf.ack(cursor, len(records))
    return out


def test_fifo_across_segments_and_empty_after_drain(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "b", max_bytes=1 << 20, segment_bytes=200)
    for i in range(50):
        buf.append([rec(i)])
    assert len(buf) == 50 and not buf.empty()
    assert len(list((tmp_path / "b").glob("seg-*.log"))) > 5
    assert drain(buf) == list(range(50))
    assert buf.empty() and len(buf) == 0
    # Delivered segments are deleted; at most the (empty) one being appended stays.
    assert sum(p.stat().st_size for p in (tmp_path / "b").glob("seg-*.log")) == 0
    buf.append([rec(50), rec(51)])
    assert drain(buf) == [50, 51]


def test_survives_a_restart_with_a_partly_delivered_buffer(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "b", segment_bytes=300, max_bytes=1 << 20)
    buf.append([rec(i) for i in range(20)])
    records, cursor = buf.peek(8)
    buf.ack(cursor, len(records))
    records, _unacked = buf.peek(5)  # read but never acknowledged: must come again
    buf.close()
    again = TelemetryBuffer(tmp_path / "b", segment_bytes=300, max_bytes=1 << 20)
    assert len(again) == 12
    assert drain(again) == list(range(8, 20))


def test_full_buffer_drops_the_oldest_and_counts_them_across_restarts(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "b", max_bytes=4096, segment_bytes=1024)
    for i in range(200):  # ~110 bytes each: ~22 KB into a 4 KB buffer
        buf.append([rec(i, pad=80)])
    size = sum(p.stat().st_size for p in (tmp_path / "b").glob("seg-*.log"))
    assert size <= 4096
    assert buf.dropped > 150
    assert buf.dropped + len(buf) == 200
    buf.close()
    again = TelemetryBuffer(tmp_path / "b", max_bytes=4096, segment_bytes=1024)
    assert again.dropped == buf.dropped
    got = drain(again)
    assert got == list(range(200 - len(got), 200))  # the newest survive, in order


def test_a_torn_last_record_is_cut_and_the_next_append_is_clean(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "b")
    buf.append([rec(0), rec(1)])
    buf.close()
    (seg,) = (tmp_path / "b").glob("seg-*.log")
    with seg.open("ab") as f:
        f.write(b'{"frame": 2, "pa')  # the power went mid-write
    again = TelemetryBuffer(tmp_path / "b")
    again.append([rec(3)])
    assert drain(again) == [0, 1, 3]


@pytest.mark.parametrize("state", [b"", b"{not json", b'{"format": 99, "segment": 1, "offset": 0}'])
def test_unreadable_state_delivers_again_from_the_oldest(tmp_path: Path, state: bytes) -> None:
    buf = TelemetryBuffer(tmp_path / "b")
    buf.append([rec(i) for i in range(4)])
    _records, cursor = buf.peek(2)
    buf.ack(cursor, 2)
    buf.close()
    (tmp_path / "b" / "state.json").write_bytes(state)
    assert drain(TelemetryBuffer(tmp_path / "b")) == [0, 1, 2, 3]  # at-least-once, no loss


def test_refuses_multi_line_records_and_bad_bounds(tmp_path: Path) -> None:
    with pytest.raises(TelemetryBufferError, match="max_bytes"):
        TelemetryBuffer(tmp_path / "b", max_bytes=10, segment_bytes=100)
    buf = TelemetryBuffer(tmp_path / "b")
    with pytest.raises(TelemetryBufferError, match="one line"):
        buf.append([b"a\nb"])
    assert buf.empty()


def test_unwritable_directory_is_a_named_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(TelemetryBufferError, match="cannot create"):
        TelemetryBuffer(tmp_path / "file" / "b")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("deliver"), st.integers(1, 9)),
        st.tuples(st.just("peek_only"), st.integers(1, 9)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops)
def test_matches_a_plain_list_model(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    """Without drops, the buffer behaves like a list: what is appended comes out once, in order.

    A restart may repeat only records that were read but not acknowledged (none here, since
    every read is either acknowledged at once or discarded before any further ack).
    """
    d = tmp_path_factory.mktemp("h")
    buf = TelemetryBuffer(d, max_bytes=1 << 20, segment_bytes=256)
    model: list[int] = []
    delivered: list[int] = []
    n = 0
    for op, k in ops:
        if op == "append":
            buf.append([rec(n + i) for i in range(k)])
            model += range(n, n + k)
            n += k
        elif op == "deliver":
            records, cursor = buf.peek(k)
            got = [json.loads(r)["frame"] for r in records]
            assert got == model[:k]
            buf.ack(cursor, len(records))
            delivered += got
            del model[: len(got)]
        elif op == "peek_only":
            records, _ = buf.peek(k)
            assert [json.loads(r)["frame"] for r in records] == model[:k]
        else:
            buf.close()
            buf = TelemetryBuffer(d, max_bytes=1 << 20, segment_bytes=256)
        assert len(buf) == len(model)
        assert buf.empty() == (not model)
    assert delivered + drain(buf) == list(range(n))
    buf.close()
    for p in d.iterdir():
        os.unlink(p)


def test_records_larger_than_a_read_chunk_come_back_whole(tmp_path: Path) -> None:
    buf = TelemetryBuffer(tmp_path / "b", max_bytes=4 << 20, segment_bytes=1 << 20)
    big = [rec(i, pad=150_000 + i) for i in range(12)]  # 150 KB each, > the 64 KiB read chunk
    buf.append(big)
    got: list[bytes] = []
    while not buf.empty():
        records, cursor = buf.peek(5)
        got += records
        buf.ack(cursor, len(records))
    assert got == big
