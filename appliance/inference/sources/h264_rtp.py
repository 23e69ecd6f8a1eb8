"""RTP packets (RFC 3550) to H.264 access units (RFC 6184), ready for a decoder.

:class:`H264Depacketizer` takes the RTP packets of one H.264 stream and returns each complete
access unit (a frame's NAL units) in Annex B form (``00 00 00 01`` before each NAL unit). It
understands single NAL unit packets, STAP-A aggregates and FU-A fragments (packetization modes 0
and 1, what cameras send); STAP-B, MTAP and FU-B (interleaved mode) are dropped as unsupported.

An access unit ends at a packet with the RTP marker bit, or when the timestamp changes (a
lost marker). Loss: a gap in sequence numbers breaks the unit being assembled, and every unit
after it is dropped until the next IDR picture (a frame decoded from a broken reference would be
smeared garbage); ``lost`` counts missing packets, ``dropped`` dropped units. The first units
before any IDR are dropped too. SPS/PPS from the SDP (``sprop-parameter-sets``) or seen in the
stream are put in front of every IDR that does not carry its own, so the decoder can start there.

Every input is untrusted: a unit larger than ``MAX_ACCESS_UNIT`` is a SourceError, a malformed
packet is dropped and counted as loss (it cannot be decoded, the stream goes on).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.inference.errors import SourceError

MAX_ACCESS_UNIT = 8 << 20  # 8 MiB: a 4K intra frame at very high quality stays well under
START = b"\x00\x00\x00\x01"
NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
STAP_A, FU_A = 24, 28


class RtpError(ValueError):
    """A packet that is not valid RTP."""


@dataclass
class RtpPacket:
    """The fields of an RTP packet we use, and its payload."""

    marker: bool
    payload_type: int
    seq: int
    timestamp: int
    payload: bytes


def parse_rtp(packet: bytes) -> RtpPacket:
    """Parse an RTP packet (version 2; CSRCs, header extension and padding removed)."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise RtpError(f"not RTP version 2 ({len(packet)} bytes)")
    csrc, has_ext, padded = packet[0] & 0x0F, packet[0] & 0x10, packet[0] & 0x20
    offset = 12 + 4 * csrc
    if has_ext:
        if len(packet) < offset + 4:
            raise RtpError("header extension past the end of the packet")
        offset += 4 + 4 * int.from_bytes(packet[offset + 2 : offset + 4], "big")
    end = len(packet)
    if padded and end > offset:
        end -= packet[-1]
    if end < offset:
        raise RtpError("header, extension or padding longer than the packet")
    return RtpPacket(
        marker=bool(packet[1] & 0x80),
        payload_type=packet[1] & 0x7F,
        seq=int.from_bytes(packet[2:4], "big"),
        timestamp=int.from_bytes(packet[4:8], "big"),
        payload=packet[offset:end],
    )


class H264Depacketizer:
    """RTP packets in, complete Annex B access units out (see the module docstring)."""

    def __init__(
        self, payload_type: int, parameter_sets: list[bytes], uri: str = "H.264 stream"
    ) -> None:
        self.payload_type, self.uri = payload_type, uri
        self._params: dict[int, bytes] = {}
        for nal in parameter_sets:
            if nal and nal[0] & 0x1F in (NAL_SPS, NAL_PPS):
                self._params[nal[0] & 0x1F] = nal
        self._nals: list[bytes] = []
        self._size = 0
        self._fu: bytearray | None = None
        self._timestamp: int | None = None
        self._broken = False
        self._need_idr = True
        self._seq: int | None = None
        self.lost = 0  # packets missing (sequence gaps) or unusable
        self.dropped = 0  # access units not handed out (broken, or before the next IDR)
        self.units = 0  # access units handed out

    def resync(self) -> None:
        """Drop everything up to the next IDR (the decoder could not use what it got)."""
        self._need_idr = True

    def push(self, packet: bytes) -> list[bytes]:
        """One RTP packet; the access units it completed (zero, one, or two on a lost marker)."""
        try:
            rtp = parse_rtp(packet)
        except RtpError:
            self.lost += 1
            self._broken = True
            return []
        if rtp.payload_type != self.payload_type:
            return []  # another stream on the channel (never seen, harmless)
        if self._seq is not None:
            gap = (rtp.seq - self._seq - 1) & 0xFFFF
            if gap >= 0x8000:
                return []  # late duplicate or reordered packet: already given up on it
            if gap:
                self.lost += gap
                self._broken = self._need_idr = True  # whichever unit it was in, wait for an IDR
        self._seq = rtp.seq
        done: list[bytes] = []
        pending = self._nals or self._fu is not None
        if self._timestamp is not None and rtp.timestamp != self._timestamp and pending:
            done += self._finish()  # the previous unit lost its marker packet
        self._timestamp = rtp.timestamp
        self._payload(rtp.payload)
        if rtp.marker:
            done += self._finish()
        return done

    def _payload(self, data: bytes) -> None:
        if not data:
            return
        kind = data[0] & 0x1F
        if 1 <= kind <= 23:
            self._fu = None
            self._add(data)
        elif kind == STAP_A:
            self._fu = None
            i = 1
            while i + 2 <= len(data):
                size = int.from_bytes(data[i : i + 2], "big")
                if size == 0 or i + 2 + size > len(data):
                    self._bad()
                    return
                self._add(data[i + 2 : i + 2 + size])
                i += 2 + size
        elif kind == FU_A and len(data) >= 2:
            start, end = data[1] & 0x80, data[1] & 0x40
            if start:
                self._fu = bytearray([(data[0] & 0xE0) | (data[1] & 0x1F)])
            elif self._fu is None:
                self._bad()  # a middle or end without its start (lost)
                return
            self._fu += data[2:]
            if len(self._fu) + self._size > MAX_ACCESS_UNIT:
                self._too_big()
            if end:
                nal, self._fu = bytes(self._fu), None
                self._add(nal)
        else:
            self._bad()  # STAP-B, MTAP, FU-B, reserved types

    def _bad(self) -> None:
        self.lost += 1
        self._broken = True
        self._fu = None

    def _too_big(self) -> None:
        raise SourceError(
            f"{self.uri}: an H.264 frame larger than {MAX_ACCESS_UNIT >> 20} MiB; "
            "not a camera stream we can decode"
        )

    def _add(self, nal: bytes) -> None:
        self._size += len(nal) + len(START)
        if self._size > MAX_ACCESS_UNIT:
            self._too_big()
        self._nals.append(nal)

    def _finish(self) -> list[bytes]:
        nals, broken = self._nals, self._broken or self._fu is not None
        self._nals, self._size, self._fu, self._broken = [], 0, None, False
        if not nals:
            if broken:  # all of it lost: what follows may refer to it
                self._need_idr = True
                self.dropped += 1
            return []
        types = {nal[0] & 0x1F for nal in nals}
        if not broken:
            for nal in nals:
                if nal[0] & 0x1F in (NAL_SPS, NAL_PPS):
                    self._params[nal[0] & 0x1F] = nal
        if broken or (self._need_idr and NAL_IDR not in types):
            self._need_idr = True
            self.dropped += 1
            return []
        if NAL_IDR in types:
            need = [t for t in (NAL_SPS, NAL_PPS) if t not in types]
            if any(t not in self._params for t in need):
                self.dropped += 1  # an IDR without parameter sets cannot be decoded
                self._need_idr = True
                return []
            nals = [self._params[t] for t in need] + nals
            self._need_idr = False
        self.units += 1
        return [START + START.join(nals)]
