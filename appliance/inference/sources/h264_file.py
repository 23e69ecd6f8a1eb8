"""H.264 video files decoded by openh264 in every runtime: no OpenCV, no ffmpeg.

``.mp4``/``.mov``/``.m4v`` files go through :class:`~appliance.inference.sources.mp4.Mp4H264Track`
(samples with their presentation times), ``.h264``/``.264`` files through
:class:`~appliance.inference.sources.annexb.AnnexBStream`. Each access unit goes to
:class:`~appliance.inference.sources.openh264.H264Decoder` with a timestamp that comes back
with its picture: with B-frames openh264 gives pictures in display order, later than their
units, and hands over the ones it holds before an IDR and when the stream ends (``flush``).

``realtime`` paces frames at the file's own times (an MP4's ``stts``/``ctts``; an Annex B
stream has none: ``fps``, default 25, as FFmpeg assumes) and makes the source live, as a
camera; ``fps`` paces at that many frames a second; ``loop`` replays the file forever (a demo
camera). A unit the decoder refuses is a :class:`SourceError` naming the file, the sample and
its byte: a file is not a camera, a damaged frame is reported rather than skipped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources.annexb import AnnexBStream
from appliance.inference.sources.frame import Frame
from appliance.inference.sources.mp4 import Mp4H264Track
from appliance.inference.sources.openh264 import DecoderMissing, H264Decoder

MP4_SUFFIXES = (".mp4", ".mov", ".m4v")
ANNEXB_SUFFIXES = (".h264", ".264")
DEFAULT_FPS = 25.0
MAX_FPS = 1000.0
MAX_WAIT_S = 10.0  # a longer gap in a file's times is a jump, not a pause: shown at once


class H264FileSource:
    """Frames of an H.264 file in display order (module docstring)."""

    def __init__(
        self, uri: str, path: Path, realtime: bool = False, loop: bool = False, fps: float = 0.0
    ) -> None:
        self.uri, self.live, self._loop = uri, realtime, loop
        if not 0 <= fps <= MAX_FPS:
            raise SourceError(f"{uri}: fps must be a number from 0 to {MAX_FPS:g}, not {fps}")
        self._mp4: Mp4H264Track | None = None
        self._annexb: AnnexBStream | None = None
        if path.suffix.lower() in ANNEXB_SUFFIXES:
            self._annexb = AnnexBStream(path)
            fps = fps or (DEFAULT_FPS if realtime else 0.0)  # no times in the stream
            self.description = f"{path.name}: H.264 Annex B stream"
        else:
            self._mp4 = Mp4H264Track(path)
            track = self._mp4
            self.description = (
                f"{path.name}: H.264 {track.codec} {track.width}x{track.height}, "
                f"{len(track)} frames"
            )
        self._paced = realtime or fps > 0
        self._period = 1.0 / fps if fps > 0 else 0.0  # else the MP4's own times
        self._decoder: H264Decoder | None = None
        self._pending: deque[tuple[np.ndarray, int]] = deque()
        self._index = 0
        self._shown = 0  # pictures of this pass through the file
        self._pass = 0
        self._t0 = 0.0
        try:
            self._restart()
            self._first: Frame | None = self._next()
        except DecoderMissing as exc:
            self.close()
            raise DecoderMissing(f"{uri}: {exc}") from None
        except BaseException:
            self.close()
            raise
        if self._first is None:
            self.close()
            raise SourceError(f"{uri}: no picture in this file (openh264 decoded none)")

    def _restart(self) -> None:
        """A fresh decoder at the file's first unit (at open, and at each loop)."""
        if self._decoder is not None:
            self._decoder.close()
        self._decoder = H264Decoder()
        self._units = iter(self._mp4_units() if self._mp4 is not None else self._annexb_units())
        self._shown = 0

    def _mp4_units(self) -> Iterator[tuple[int, int, bytes, int]]:
        assert self._mp4 is not None
        track = self._mp4
        for i in range(len(track)):
            unit = track.sample(i)
            if i == 0:  # avcC's SPS/PPS (avc3 may repeat them in-band: harmless)
                unit = track.parameter_sets + unit
            yield i, int(track.offsets[i]), unit, int(track.times[i])

    def _annexb_units(self) -> Iterator[tuple[int, int, bytes, int]]:
        assert self._annexb is not None
        for i, (offset, unit) in enumerate(self._annexb.units()):
            yield i, offset, unit, i

    def _decode_more(self) -> bool:
        """Decode until a picture is pending; False at the end of the file."""
        decoder = self._decoder
        assert decoder is not None
        while not self._pending:
            step = next(self._units, None)
            if step is None:
                self._pending.extend(decoder.flush())
                return bool(self._pending)
            i, offset, unit, stamp = step
            errors = decoder.errors
            self._pending.extend(decoder.decode_all(unit, stamp))
            if decoder.errors > errors:
                raise SourceError(
                    f"{self.uri}: openh264 refused access unit {i} (byte {offset}): a damaged "
                    "H.264 frame, or a kind openh264 does not decode (interlaced video)"
                )
        return True

    def _next(self) -> Frame | None:
        t0 = time.monotonic()
        if not self._decode_more():
            if not self._loop or self._shown == 0:
                return None
            self._pass += 1
            self._restart()
            if not self._decode_more():
                return None
        image, stamp = self._pending.popleft()
        self._pace(stamp)
        self._shown += 1
        t1 = time.monotonic()
        self._index += 1
        return Frame(image, "BGR", self._index - 1, t1, (t1 - t0) * 1000)

    def _pace(self, stamp: int) -> None:
        """Wait until this picture is due (``realtime`` or ``fps``); catch up, never burst."""
        if not self._paced:
            return
        if self._period:
            due_s = self._index * self._period
        else:
            assert self._mp4 is not None
            due_s = (self._pass * self._mp4.duration + stamp) / self._mp4.timescale
        now = time.monotonic()
        if self._index == 0:
            self._t0 = now - due_s
        wait = self._t0 + due_s - now
        if wait > MAX_WAIT_S or wait < -0.5:  # a jump in the times, or far behind (a slow
            self._t0 -= wait  # consumer): start the schedule again from here, never burst
        elif wait > 0:
            time.sleep(wait)

    def read(self) -> Frame | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._next()

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._mp4 is not None:
            self._mp4.close()
        if self._annexb is not None:
            self._annexb.close()
