"""Frame sources, and a grabber that keeps only the latest frame of a live source.

URIs understood by :func:`open_source`:

* ``v4l2:///dev/video0`` or ``/dev/video0`` - a V4L2 camera, read with linuxpy (ioctl + mmap,
  no OpenCV; ``?format=YUYV|MJPG|GREY&width=&height=&fps=``, see ``v4l2.py``; YUYV converted
  by libyuv, numpy where it is missing, MJPEG by simplejpeg: ``pixels.py``); a runtime that
  has OpenCV but not linuxpy falls back to OpenCV ``CAP_V4L2``,
* ``rtsp://``, ``rtsps://``, ``http://``, ``https://``, ``udp://``, ``tcp://``, ``rtmp://`` - a
  network stream, with open/read timeouts so a dead camera cannot hang us. Read with OpenCV
  ``CAP_FFMPEG`` where the runtime carries OpenCV (a recipe's ``opencv`` extra); without it,
  an ``rtsp://`` H.264 camera is read in Python and decoded by openh264 (every runtime,
  ``rtsp.py``), an HTTP(S) MJPEG stream (``multipart/x-mixed-replace``) is read in Python and
  decoded with simplejpeg (every runtime, ``mjpeg_http.py``), and anything else (RTSP with
  another codec, ``rtsps://``, MPEG-TS, ...) goes to an ``ffmpeg`` program in the image
  (``ffmpeg_pipe.py``; a SourceError saying so where there is none),
* a video file path (or ``file://`` URI) - read frame by frame with OpenCV where the runtime
  has it; without it, H.264 in ``.mp4``/``.mov``/``.m4v`` or a raw ``.h264``/``.264`` stream
  is demuxed in Python and decoded by openh264 (every runtime, ``h264_file.py``), anything
  else goes to ``ffmpeg``. ``?realtime=1`` paces it at the file's frame rate and makes it
  behave like a live camera; ``?loop=1`` replays an H.264 file forever and ``&fps=N`` paces
  it at N frames a second (with OpenCV too: those two always take the openh264 reader),
* a directory - every ``*.jpg``/``*.jpeg``/``*.png``/``*.bmp`` in name order (JPEGs without
  OpenCV too, see ``files.py``),
* ``npz:<path>`` - the ``images`` array of a reference split (RGB), used by tests and benches;
  ``?loop=1`` replays it forever and ``&fps=N`` paces it (a test-pattern camera for QEMU and
  demos, needing no camera driver).

Live sources go through :class:`LatestFrameGrabber`: a thread reads as fast as the camera
delivers and keeps one slot; the pipeline takes whatever is newest, so it never works on a
stale queued frame when the model is slower than the camera.

Whatever fails while opening (a missing library, device or file, a format we cannot convert)
is a :class:`SourceError` naming the source and the reason, never an ``ImportError``.
"""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources import openh264
from appliance.inference.sources.ffmpeg_pipe import FfmpegPipeSource, find_ffmpeg
from appliance.inference.sources.files import ImageFolderSource
from appliance.inference.sources.frame import (
    IMAGE_SUFFIXES,
    OPEN_TIMEOUT_MS,
    READ_TIMEOUT_MS,
    STREAM_SCHEMES,
    Frame,
    Source,
)
from appliance.inference.sources.h264_file import (
    ANNEXB_SUFFIXES,
    MP4_SUFFIXES,
    H264FileSource,
)
from appliance.inference.sources.mjpeg_http import MjpegHttpSource, NotMjpegStream
from appliance.inference.sources.mp4 import NotH264File
from appliance.inference.sources.opencv import CvCaptureSource
from appliance.inference.sources.openh264 import DecoderMissing
from appliance.inference.sources.rtsp import NotH264Stream, RtspSource
from appliance.inference.sources.v4l2 import V4L2Source

__all__ = [
    "IMAGE_SUFFIXES",
    "OPEN_TIMEOUT_MS",
    "READ_TIMEOUT_MS",
    "STREAM_SCHEMES",
    "ArraySource",
    "CvCaptureSource",
    "FfmpegPipeSource",
    "Frame",
    "H264FileSource",
    "ImageFolderSource",
    "LatestFrameGrabber",
    "MjpegHttpSource",
    "RtspSource",
    "Source",
    "V4L2Source",
    "capabilities",
    "frames",
    "is_live_uri",
    "open_source",
]


class ArraySource:
    """Frames from an in-memory array [N,H,W,3] (reference splits, tests, benches)."""

    live = False

    def __init__(
        self,
        uri: str,
        images: np.ndarray,
        color: str = "RGB",
        loops: int = 1,
        fps: float = 0.0,
    ) -> None:
        """``loops=0`` replays forever; ``fps > 0`` delivers at most that many frames a second."""
        self.uri, self._images, self._color = uri, images, color
        self._total = len(images) * loops if loops > 0 else None
        self._period = 1.0 / fps if fps > 0 else 0.0
        self._next = 0.0
        self._i = 0

    def read(self) -> Frame | None:
        if self._total is not None and self._i >= self._total:
            return None
        if self._period:
            wait = self._next - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._next = max(self._next, time.monotonic()) + self._period
        t0 = time.monotonic()
        image = self._images[self._i % len(self._images)]
        self._i += 1
        t1 = time.monotonic()
        return Frame(image, self._color, self._i - 1, t1, (t1 - t0) * 1000)

    def close(self) -> None:
        pass


def is_live_uri(uri: str) -> bool:
    """True for cameras and network streams (worth waiting for), False for files and folders."""
    scheme = urlsplit(uri).scheme
    return scheme in (*STREAM_SCHEMES, "v4l2") or (not scheme and uri.startswith("/dev/video"))


def open_source(uri: str) -> Source:
    """Open a frame source from a URI (see the module docstring); raise SourceError if it fails."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    realtime = query.get("realtime", ["0"])[0] in ("1", "true")
    if parts.scheme == "npz":
        path = Path(uri[4:].split("?", maxsplit=1)[0])
        try:
            loops = 0 if query.get("loop", ["0"])[0] in ("1", "true") else 1
            fps = float(query.get("fps", ["0"])[0])
        except ValueError:
            raise SourceError(f"{uri}: fps must be a number") from None
        try:
            with np.load(path, allow_pickle=False) as npz:
                images = npz["images"]
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError(f"{path}: cannot read images: {exc}") from None
        if len(images) == 0:
            raise SourceError(f"{path}: the images array is empty")
        return ArraySource(uri, images, loops=loops, fps=fps)
    if parts.scheme == "v4l2" or (not parts.scheme and uri.startswith("/dev/video")):
        device = parts.path if parts.scheme else uri.split("?", maxsplit=1)[0]
        return _open_v4l2(uri, device, query)
    if parts.scheme in STREAM_SCHEMES:
        return _open_stream(uri, parts.scheme)
    path = Path(parts.path if parts.scheme == "file" else uri.split("?", maxsplit=1)[0])
    if path.is_dir():
        return ImageFolderSource(uri, path)
    if path.is_file():
        return _open_file(uri, path, query, realtime)
    raise SourceError(f"{uri}: no such file, folder, device or stream URL")


def _open_file(uri: str, path: Path, query: dict[str, list[str]], realtime: bool) -> Source:
    """OpenCV where the runtime has it; else H.264 (MP4/MOV, Annex B) with openh264; else ffmpeg.

    OpenCV (FFmpeg's decoder) goes first where a recipe added it, as for RTSP: it reads every
    codec and decodes Main/High profile H.264 with about half openh264's CPU (README
    performance table). ``loop``/``fps`` are this reader's: a URI that asks for them gets it
    for an H.264 file whatever else the runtime has. A file it does not take (another codec,
    fragmented MP4, not ISO BMFF) goes to OpenCV or ffmpeg; with neither, the error names
    what the file holds.
    """
    try:
        loop = query.get("loop", ["0"])[0] in ("1", "true")
        fps = float(query.get("fps", ["0"])[0])
    except ValueError:
        raise SourceError(f"{uri}: fps must be a number") from None
    opencv = _importable("cv2")
    h264 = path.suffix.lower() in MP4_SUFFIXES + ANNEXB_SUFFIXES
    if h264 and openh264.available() and (loop or "fps" in query or not opencv):
        try:
            return H264FileSource(uri, path, realtime=realtime, loop=loop, fps=fps)
        except NotH264File as exc:
            if not opencv and not find_ffmpeg():
                raise NotH264File(
                    f"{exc}; this runtime decodes H.264 only, and a video file in another "
                    "format needs OpenCV or an ffmpeg program: install ffmpeg in the image (or "
                    "set EDGEKILN_FFMPEG), or build the image with OpenCV (recipe: [runtime] "
                    'extras = ["opencv"]), or convert the file to H.264'
                ) from None
    if opencv:
        return CvCaptureSource(uri, str(path), "ffmpeg", live=False, realtime=realtime)
    return FfmpegPipeSource(uri, str(path), live=False, realtime=realtime)


def _open_stream(uri: str, scheme: str) -> Source:
    """OpenCV if the runtime has it; else RTSP/H.264 or MJPEG over HTTP in Python, else ffmpeg."""
    if _importable("cv2"):
        return CvCaptureSource(uri, uri, "ffmpeg", live=True)
    if scheme == "rtsp":
        try:
            return RtspSource(uri)
        except (NotH264Stream, DecoderMissing):
            if not find_ffmpeg():
                raise  # its message says what the camera sends, or which library is missing
    if scheme in ("http", "https"):
        try:
            return MjpegHttpSource(uri)
        except NotMjpegStream:
            pass  # e.g. MPEG-TS over HTTP: a video decoder's job
    return FfmpegPipeSource(uri, uri, live=True)


def capabilities() -> dict[str, str]:
    """What this runtime reads cameras with (``appliance info``; the freeze tests check it)."""
    from appliance.inference.sources import libyuv

    opencv = _importable("cv2")
    ffmpeg = bool(find_ffmpeg())
    return {
        "v4l2": "linuxpy" if _importable("linuxpy") else ("opencv" if opencv else "none"),
        "yuyv": "libyuv" if libyuv.available() else "numpy",
        "mjpeg": "simplejpeg" if _importable("simplejpeg") else ("opencv" if opencv else "none"),
        "streams": "opencv" if opencv else ("ffmpeg" if ffmpeg else "mjpeg-http"),
        "rtsp": "opencv"
        if opencv
        else ("openh264" if openh264.available() else ("ffmpeg" if ffmpeg else "none")),
        # H.264 video files (.mp4/.mov/.m4v/.h264/.264); other video files: as "streams"
        "h264_files": "opencv"
        if opencv
        else ("openh264" if openh264.available() else ("ffmpeg" if ffmpeg else "none")),
    }


def _importable(module: str) -> bool:
    """True if ``module`` imports here (absent or broken, e.g. a missing shared library: False)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _open_v4l2(uri: str, device: str, query: dict[str, list[str]]) -> Source:
    """linuxpy when the runtime has it (every target's does), else OpenCV, else SourceError."""
    if not _importable("linuxpy") and _importable("cv2"):
        return CvCaptureSource(uri, device, "v4l2", live=True)
    try:
        width = int(query["width"][0]) if "width" in query else None
        height = int(query["height"][0]) if "height" in query else None
        fps = float(query["fps"][0]) if "fps" in query else None
    except ValueError:
        raise SourceError(f"{uri}: width/height must be integers and fps a number") from None
    fmt = query.get("format", [None])[0]
    return V4L2Source(uri, device, fmt, width, height, fps)


class LatestFrameGrabber:
    """Read a live source on a thread; keep only the newest frame (older ones are dropped).

    ``get()`` returns the newest frame not yet returned, waiting for one if needed. A reader
    error is stored and raised by the next ``get()``, so the pipeline decides what to do.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._stop = threading.Event()
        self.produced = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name=f"grab:{source.uri}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                with self._cond:
                    if frame is None:
                        self._ended = True
                        self._cond.notify_all()
                        return
                    if self._frame is not None:
                        self.dropped += 1  # never consumed: stale now
                    self._frame = frame
                    self.produced += 1
                    self._cond.notify_all()
        except Exception as exc:  # reported to the consumer, never lost on the thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()
        finally:
            if self._stop.is_set():  # close() gave up waiting for us: release the device here
                self.source.close()

    def get(self, timeout: float = READ_TIMEOUT_MS / 1000) -> Frame | None:
        """The newest unconsumed frame; None at end of stream; SourceError on failure/timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._frame or self._error or self._ended, timeout):
                raise SourceError(
                    f"{self.source.uri}: no frame for {timeout:.1f} s (camera stalled)"
                )
            if self._frame is not None:
                frame, self._frame = self._frame, None
                return frame
            if self._error is not None:
                err = self._error
                raise (
                    err
                    if isinstance(err, SourceError)
                    else SourceError(f"{self.source.uri}: {err}")
                )
            return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=READ_TIMEOUT_MS / 1000 + 1)
        if not self._thread.is_alive():
            self.source.close()


def frames(source: Source) -> Iterator[Frame]:
    """Iterate a non-live source to its end."""
    while (frame := source.read()) is not None:
        yield frame
