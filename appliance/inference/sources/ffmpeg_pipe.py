"""Network streams and video files through an ``ffmpeg`` program, for runtimes without OpenCV.

The runtime does not link FFmpeg: it starts the ``ffmpeg`` executable it finds on ``PATH`` (or
``EDGEKILN_FFMPEG``) with an argument list, and reads decoded frames from its stdout as a
stream of binary PPM images (``-f image2pipe -c:v ppm``: a tiny text header with the size, then
RGB bytes), so a resolution change mid-stream needs no renegotiation. FFmpeg's log goes to an
unnamed temporary file (a pipe could fill up and stall it) and becomes the reason of the
:class:`SourceError` when the stream fails.

Nothing can hang us: network inputs get FFmpeg's own I/O timeout (``-rw_timeout``, and
``-timeout`` for RTSP), and every read of the pipe waits at most ``OPEN_TIMEOUT_MS`` for the
first frame and ``READ_TIMEOUT_MS`` for each later one (``select``); past that the process is
killed and the read is a :class:`SourceError` naming the source. The first frame is read while
opening, so a dead camera fails at open like OpenCV's ``isOpened()`` check.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources.frame import OPEN_TIMEOUT_MS, READ_TIMEOUT_MS, Frame, redact

FFMPEG_ENV = "EDGEKILN_FFMPEG"
_HEADER_MAX = 64  # "P6\n<width> <height>\n255\n"


def find_ffmpeg() -> str | None:
    """The ffmpeg program to use: ``$EDGEKILN_FFMPEG`` if set, else ``ffmpeg`` on PATH."""
    return os.environ.get(FFMPEG_ENV) or shutil.which("ffmpeg")


def child_env() -> dict[str, str]:
    """Our environment, minus the frozen runtime's library path (ffmpeg uses the system's).

    PyInstaller's bootloader points LD_LIBRARY_PATH into ``_internal`` and keeps the original in
    LD_LIBRARY_PATH_ORIG; a child that inherited it could load our bundled libraries.
    """
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if orig is None:
            env.pop("LD_LIBRARY_PATH", None)
        else:
            env["LD_LIBRARY_PATH"] = orig
    return env


def ffmpeg_command(ffmpeg: str, target: str, live: bool, realtime: bool) -> list[str]:
    """The argument list that decodes ``target`` to PPM frames on stdout."""
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    scheme = urlsplit(target).scheme
    if live:
        timeout_us = str(max(OPEN_TIMEOUT_MS, READ_TIMEOUT_MS) * 1000)
        if scheme in ("rtsp", "rtsps"):
            cmd += ["-rtsp_transport", "tcp", "-timeout", timeout_us]
        else:
            cmd += ["-rw_timeout", timeout_us]
        # A live camera: the newest frame, not a queue; probe 1 s of it, not FFmpeg's 5 s.
        cmd += ["-fflags", "nobuffer", "-analyzeduration", "1000000", "-probesize", "1000000"]
    if realtime:
        cmd += ["-re"]
    return [*cmd, "-i", target, "-an", "-sn", "-f", "image2pipe", "-c:v", "ppm", "-"]


class FfmpegPipeSource:
    """Frames decoded by an ``ffmpeg`` child process, read from its stdout with deadlines."""

    def __init__(self, uri: str, target: str, live: bool, realtime: bool = False) -> None:
        uri = redact(uri)  # messages, events and logs never show a camera's password
        self._target = target
        ffmpeg = find_ffmpeg()
        if ffmpeg is None:
            raise SourceError(
                f"{uri}: a stream or video file needs OpenCV or an ffmpeg program, and this "
                "runtime has neither; install ffmpeg in the image (or set EDGEKILN_FFMPEG), or "
                'build the image with OpenCV (recipe: [runtime] extras = ["opencv"])'
            )
        self.uri, self.live, self._realtime = uri, live or realtime, realtime
        self._buf = bytearray()
        self._eof = False
        self._index = 0
        self._t0 = time.monotonic()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the source)
        try:
            self._proc = subprocess.Popen(
                ffmpeg_command(ffmpeg, target, live, realtime),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=child_env(),
            )
        except OSError as exc:
            self._log.close()
            raise SourceError(f"{uri}: cannot start {ffmpeg}: {exc}") from None
        assert self._proc.stdout is not None
        self._fd = self._proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        try:
            self._first: Frame | None = self._next(OPEN_TIMEOUT_MS, opening=True)
        except SourceError:
            self.close()
            raise
        if self._first is None:
            reason = self._reason() or "no video frame in it"
            self.close()
            raise SourceError(f"{uri}: cannot open: {reason}")

    def _reason(self) -> str:
        """The end of FFmpeg's log, one line (what it said about the failure)."""
        try:
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return " / ".join(lines[-3:]).replace(self._target, redact(self._target))

    def _fill(self, need: int, deadline: float, what: str) -> bool:
        """Read until ``need`` bytes are buffered; False at end of stream; SourceError on stall."""
        while len(self._buf) < need:
            if self._eof:
                return False
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                self._proc.kill()
                raise SourceError(
                    f"{self.uri}: no {what} for {deadline - self._t0:.1f} s "
                    f"(camera or stream stalled){_said(self._reason())}"
                )
            chunk = os.read(self._fd, max(need - len(self._buf), 1 << 16))
            if not chunk:
                self._eof = True
            self._buf += chunk
        return True

    def _next(self, timeout_ms: int, opening: bool = False) -> Frame | None:
        self._t0 = time.monotonic()
        deadline = self._t0 + timeout_ms / 1000
        what = "first frame" if opening else "frame"
        # Header: "P6", width, height, maxval, separated by whitespace, one byte after maxval.
        while True:
            end = _header_end(self._buf)
            if end is not None:
                break
            if len(self._buf) > _HEADER_MAX:
                raise SourceError(f"{self.uri}: ffmpeg wrote no PPM frame header; is it FFmpeg?")
            if not self._fill(len(self._buf) + 1, deadline, what):
                self._check_end()
                return None
        header = bytes(self._buf[:end])
        try:
            magic, width, height, maxval = header.split()[0], *map(int, header.split()[1:4])
        except ValueError:
            magic, width, height, maxval = b"", 0, 0, 0
        if magic != b"P6" or maxval != 255 or width <= 0 or height <= 0:
            self._proc.kill()
            raise SourceError(f"{self.uri}: unexpected frame header {header!r} from ffmpeg")
        size = width * height * 3
        if not self._fill(end + size, deadline, what):
            self._check_end()
            return None
        image = np.frombuffer(self._buf, np.uint8, count=size, offset=end).copy()
        del self._buf[: end + size]
        t1 = time.monotonic()
        self._index += 1
        return Frame(
            image.reshape(height, width, 3), "RGB", self._index - 1, t1, (t1 - self._t0) * 1000
        )

    def _check_end(self) -> None:
        """At the end of FFmpeg's output: fine for a file, a SourceError for a failure or camera."""
        try:
            code = self._proc.wait(timeout=READ_TIMEOUT_MS / 1000)
        except subprocess.TimeoutExpired:  # closed its output but lingers: not a source any more
            self._proc.kill()
            code = self._proc.wait()
        said = _said(self._reason())
        if code != 0 and self._index == 0:
            raise SourceError(f"{self.uri}: cannot open (ffmpeg exit {code}){said}")
        if code != 0 or (self.live and not self._realtime):
            raise SourceError(f"{self.uri}: stopped delivering frames (ffmpeg exit {code}){said}")

    def read(self) -> Frame | None:
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._next(READ_TIMEOUT_MS)

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        self._log.close()


def _header_end(buf: bytearray) -> int | None:
    """Offset just past a complete PPM header at the start of ``buf``, or None if incomplete."""
    fields, i, n = 0, 0, min(len(buf), _HEADER_MAX)
    while i < n:
        while i < n and buf[i] in b" \t\r\n":
            i += 1
        start = i
        while i < n and buf[i] not in b" \t\r\n":
            i += 1
        if i == n:
            return None  # the field may go on
        if i > start:
            fields += 1
            if fields == 4:
                return i + 1  # one whitespace byte after maxval, then the pixels
    return None


def _said(reason: str) -> str:
    return f"; ffmpeg said: {reason}" if reason else ""
