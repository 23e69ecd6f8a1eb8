"""The RTSP response parser, SDP/auth helpers and RTP H.264 depacketizer, on untrusted bytes.

What cameras send (a GStreamer-shaped SDP, FU-A/STAP-A/single NAL packets made here by an RFC
6184 packetizer), what they should not (malformed heads, oversized bodies, lost packets), and
random input (hypothesis): every outcome is a value or a SourceError, never another exception.
Responses go through a real socket pair into :class:`Wire`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import socket
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.errors import SourceError
from appliance.inference.sources import libyuv
from appliance.inference.sources.frame import redact
from appliance.inference.sources.h264_rtp import MAX_ACCESS_UNIT, H264Depacketizer, parse_rtp
from appliance.inference.sources.pixels import i420_to_bgr_numpy
from appliance.inference.sources.rtsp import Wire
from appliance.inference.sources.rtsp_protocol import (
    MAX_BODY,
    Authenticator,
    Response,
    parse_challenges,
    parse_head,
    parse_sdp,
    session_id,
    sprop_parameter_sets,
)

SPS = bytes([0x67, 0x42, 0xC0, 0x1E, 0xDA, 0x02, 0x80, 0xBF, 0xE5])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])


def rtp(seq: int, ts: int, payload: bytes, marker: bool = False, pt: int = 96) -> bytes:
    return (
        bytes([0x80, (0x80 if marker else 0) | pt])
        + seq.to_bytes(2, "big")
        + ts.to_bytes(4, "big")
        + b"\x12\x34\x56\x78"
        + payload
    )


def packetize(nals: list[bytes], seq: int, ts: int, mtu: int = 100) -> list[bytes]:
    """RFC 6184 non-interleaved mode: small NALs in one STAP-A, big ones in FU-A fragments."""
    payloads: list[bytes] = []
    small = [n for n in nals if len(n) < 40]
    if len(small) > 1:
        payloads.append(bytes([24]) + b"".join(len(n).to_bytes(2, "big") + n for n in small))
    elif small:
        payloads.append(small[0])
    for nal in (n for n in nals if len(n) >= 40):
        if len(nal) <= mtu:
            payloads.append(nal)
            continue
        body = nal[1:]
        chunks = [body[i : i + mtu] for i in range(0, len(body), mtu)]
        for i, chunk in enumerate(chunks):
            header = (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0) | nal[0] & 0x1F
            payloads.append(bytes([(nal[0] & 0xE0) | 28, header]) + chunk)
    return [rtp(seq + i, ts, p, marker=i == len(payloads) - 1) for i, p in enumerate(payloads)]


def idr(n: int) -> bytes:
    return bytes([0x65]) + bytes([n]) * 300


def p_slice(n: int) -> bytes:
    return bytes([0x41]) + bytes([n]) * 120


def test_depacketizer_reassembles_stap_a_fu_a_and_single_nal_units() -> None:
    depay = H264Depacketizer(96, [SPS, PPS])
    units = []
    seq = 100
    for i, nals in enumerate([[SPS, PPS, idr(1)], [p_slice(2)], [bytes([0x41, 7, 7])]]):
        for packet in packetize(nals, seq, 3000 * i):
            units += depay.push(packet)
            seq += 1
    assert units == [
        b"\0\0\0\1" + b"\0\0\0\1".join([SPS, PPS, idr(1)]),
        b"\0\0\0\1" + p_slice(2),
        b"\0\0\0\1" + bytes([0x41, 7, 7]),
    ]
    assert (depay.lost, depay.dropped, depay.units) == (0, 0, 3)


def test_idr_without_in_band_parameter_sets_gets_the_sdp_ones() -> None:
    depay = H264Depacketizer(96, [SPS, PPS])
    units = [u for p in packetize([idr(3)], 0, 0) for u in depay.push(p)]
    assert units == [b"\0\0\0\1" + b"\0\0\0\1".join([SPS, PPS, idr(3)])]
    # without them anywhere, the IDR cannot be decoded: dropped, counted
    bare = H264Depacketizer(96, [])
    assert [u for p in packetize([idr(3)], 0, 0) for u in bare.push(p)] == []
    assert bare.dropped == 1


def test_packet_loss_drops_until_the_next_idr_and_counts() -> None:
    depay = H264Depacketizer(96, [SPS, PPS])
    frames = [[idr(1)], [p_slice(2)], [p_slice(3)], [p_slice(4)], [idr(5)], [p_slice(6)]]
    depay = H264Depacketizer(96, [SPS, PPS])
    seq, out = 0, []
    for i, nals in enumerate(frames):
        for j, packet in enumerate(packetize(nals, seq, 3000 * i)):
            seq += 1
            if not (i == 2 and j == 1):
                out += depay.push(packet)
    assert [u[-1] for u in out] == [1, 2, 5, 6]
    assert (depay.lost, depay.dropped) == (1, 2)


def test_lost_marker_ends_the_unit_at_the_next_timestamp_and_late_packets_are_ignored() -> None:
    depay = H264Depacketizer(96, [SPS, PPS])
    a = rtp(1, 0, idr(1), marker=False)  # marker lost on the wire
    b = rtp(2, 3000, p_slice(2), marker=True)
    assert depay.push(a) == []
    units = depay.push(b)
    assert [u[-1] for u in units] == [1, 2]
    assert depay.push(rtp(1, 0, p_slice(9), marker=True)) == []  # late duplicate
    assert depay.push(rtp(3, 6000, b"", marker=True)) == []  # empty payload: nothing


def test_an_oversized_unit_is_a_source_error() -> None:
    depay = H264Depacketizer(96, [SPS, PPS], "rtsp://cam/x")
    chunk = bytes([0x7C, 0x85]) + bytes(60000)
    depay.push(rtp(0, 0, chunk))
    with pytest.raises(SourceError, match=r"rtsp://cam/x: an H.264 frame larger than 8 MiB"):
        for i in range(1, MAX_ACCESS_UNIT // 60000 + 2):
            depay.push(rtp(i, 0, bytes([0x7C, 0x05]) + bytes(60000)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_depacketizer_fuzz(packets: list[bytes]) -> None:
    depay = H264Depacketizer(96, [SPS, PPS])
    for packet in packets:
        for unit in depay.push(packet):
            assert unit.startswith(b"\0\0\0\1") and len(unit) <= MAX_ACCESS_UNIT
    # and RTP-shaped packets with random payloads
    depay = H264Depacketizer(96, [])
    for i, packet in enumerate(packets):
        for unit in depay.push(rtp(i, i // 3, packet, marker=i % 3 == 2)):
            assert unit.startswith(b"\0\0\0\1")


def test_parse_rtp_strips_csrc_extension_and_padding() -> None:
    packet = bytes([0xB1, 0xE0, 0, 5, 0, 0, 0, 9, 1, 2, 3, 4])  # padding, ext, 1 CSRC, marker
    packet += b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!" + b"payload" + b"\0\0\3"
    got = parse_rtp(packet)
    assert (got.marker, got.payload_type, got.seq, got.timestamp) == (True, 96, 5, 9)
    assert got.payload == b"payload"


GST_SDP = """v=0
o=- 1188340656180883 1 IN IP4 127.0.0.1
s=Session streamed with GStreamer
t=0 0
a=control:*
a=range:npt=now-
m=video 0 RTP/AVP 96
c=IN IP4 0.0.0.0
a=rtpmap:96 H264/90000
a=framerate:15
a=fmtp:96 packetization-mode=1;profile-level-id=42c01e;sprop-parameter-sets={sets}
a=control:stream=0
m=audio 0 RTP/AVP 0
a=control:stream=1
"""


def test_sdp_video_track_control_and_parameter_sets() -> None:
    sets = ",".join(base64.b64encode(n).decode() for n in (SPS, PPS))
    tracks = parse_sdp(GST_SDP.format(sets=sets), "rtsp://127.0.0.1:8554/cam/")
    assert len(tracks) == 1
    track = tracks[0]
    assert (track.payload_type, track.encoding, track.clock_rate) == (96, "H264", 90000)
    assert track.control == "rtsp://127.0.0.1:8554/cam/stream=0"
    assert sprop_parameter_sets(track.fmtp) == [SPS, PPS]
    assert sprop_parameter_sets({"sprop-parameter-sets": "!!,"}) == []
    jpeg = parse_sdp("m=video 0 RTP/AVP 26\r\na=control:rtsp://h/abs\r\n", "rtsp://h/x")
    assert (jpeg[0].encoding, jpeg[0].control) == ("JPEG", "rtsp://h/abs")
    with pytest.raises(SourceError, match="SDP of more than"):
        parse_sdp("x" * (MAX_BODY + 1), "rtsp://h/")


def test_digest_answer_matches_rfc_2617_formula() -> None:
    challenge = 'Digest realm="cam", nonce="abc123", qop="auth"\nBasic realm="cam"'
    auth = Authenticator("admin", "s3cret")
    assert auth.accept(parse_challenges(challenge))
    header = auth.header("DESCRIBE", "rtsp://h/cam")["Authorization"]
    fields = dict(
        (k.strip(), v.strip('"')) for k, v in (p.split("=", 1) for p in header[7:].split(", "))
    )

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1, ha2 = md5("admin:cam:s3cret"), md5("DESCRIBE:rtsp://h/cam")
    expected = md5(f"{ha1}:abc123:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")
    assert fields["response"] == expected and fields["username"] == "admin"
    basic = Authenticator("a", "b")
    assert basic.accept(parse_challenges('Basic realm="x"'))
    assert basic.header("PLAY", "u") == {"Authorization": "Basic YTpi"}
    assert not Authenticator("a", "b").accept(parse_challenges('Negotiate realm="x"'))


def test_session_header_and_redaction() -> None:
    assert session_id("abcDEF;timeout=10") == ("abcDEF", 10.0)
    assert session_id("xyz") == ("xyz", 60.0)
    with pytest.raises(SourceError, match="bad Session header"):
        session_id(";timeout=5")
    assert redact("rtsp://admin:pw@10.0.0.5:554/s?x=1") == "rtsp://10.0.0.5:554/s?x=1"
    assert redact("rtsp://10.0.0.5/s") == "rtsp://10.0.0.5/s"


def wire_messages(data: bytes, count: int = 3) -> list[tuple[int, bytes] | Response]:
    """Feed ``data`` through a real socket pair into Wire; the messages before EOF/error."""
    a, b = socket.socketpair()
    try:
        b.sendall(data)
        b.shutdown(socket.SHUT_WR)
        wire = Wire(a)
        out: list[tuple[int, bytes] | Response] = []
        for _ in range(count):
            try:
                out.append(wire.message(time.monotonic() + 5))
            except EOFError:
                break
        return out
    finally:
        a.close()
        b.close()


def test_wire_reads_responses_and_interleaved_packets() -> None:
    data = (
        b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Length: 5\r\n\r\nhello"
        + b"$\x00\x00\x03abc"
        + b"SET_PARAMETER rtsp://x RTSP/1.0\r\nCSeq: 9\r\nContent-Length: 2\r\n\r\nhi"
    )
    msgs = wire_messages(data)
    assert isinstance(msgs[0], Response) and msgs[0].body == b"hello"
    assert msgs[0].header("CSEQ") == "2"
    assert msgs[1] == (0, b"abc")
    assert isinstance(msgs[2], Response) and msgs[2].status == 0  # a server request, skipped


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\n\r\n", "not an RTSP status line"),
        (b"RTSP/1.0 200 OK\r\nbroken line\r\n\r\n", "bad response header line"),
        (b"RTSP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n", "Content-Length"),
        (b"RTSP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"RTSP/1.0 200 OK\r\n" + b"X: y\r\n" * 70 + b"\r\n", "header lines"),
        (b"RTSP/1.0 200 OK\r\nX: " + b"y" * 20000, "response head"),
    ],
    ids=["http", "header-line", "huge-body", "negative-body", "70-headers", "endless-head"],
)
def test_wire_refuses_malformed_heads(data: bytes, reason: str) -> None:
    with pytest.raises(SourceError, match=reason):
        wire_messages(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_wire_fuzz(data: bytes) -> None:
    try:
        msgs = wire_messages(data)
    except SourceError:
        return
    for msg in msgs:
        assert isinstance(msg, (Response, tuple))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_head_and_sdp_parsers_fuzz(text: str) -> None:
    with contextlib.suppress(SourceError):
        parse_head(("RTSP/1.0 200 OK\r\n" + text).encode("utf-8", "replace")[:4000])
    parse_sdp(text, "rtsp://h/")
    parse_challenges(text)


@pytest.mark.skipif(not libyuv.available(), reason="libyuv0 is not installed")
def test_i420_numpy_fallback_matches_libyuv() -> None:
    rng = np.random.default_rng(1)
    h, w = 48, 64
    y = rng.integers(16, 236, (h, w), np.uint8)
    u = rng.integers(16, 241, (h // 2, w // 2), np.uint8)
    v = rng.integers(16, 241, (h // 2, w // 2), np.uint8)
    fast = libyuv.i420_to_bgr(y.ctypes.data, w, u.ctypes.data, v.ctypes.data, w // 2, w, h)
    assert fast is not None
    slow = i420_to_bgr_numpy(y, u, v)
    diff = np.abs(fast.astype(int) - slow.astype(int))
    assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())
