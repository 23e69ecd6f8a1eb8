"""A V4L2 camera read without OpenCV: linuxpy (ioctl + mmap streaming) and our pixel converters.

linuxpy is pure Python (ctypes over the kernel's V4L2 ioctls, 0.5 MB wheel, no compiled part),
so the same code runs in every target's frozen runtime, x86-64 and arm64 alike. The device is
opened non-blocking; each :meth:`V4L2Source.read` waits at most ``READ_TIMEOUT_MS`` for a
buffer (select), copies it out of the mmap ring and converts it to BGR (``pixels.py``).

URI options (query string): ``format=YUYV|MJPG|GREY`` (default: MJPG when the camera offers
it, else YUYV, else GREY), ``width=`` / ``height=`` (default: the device's current size) and
``fps=``.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.inference.errors import SourceError
from appliance.inference.sources import libyuv
from appliance.inference.sources.frame import READ_TIMEOUT_MS, Frame
from appliance.inference.sources.pixels import to_bgr

# Our names for the formats we convert, keyed by linuxpy's PixelFormat names.
CONVERTIBLE = {"YUYV": "YUYV", "MJPEG": "MJPG", "JPEG": "JPEG", "GREY": "GREY"}
# MJPEG first: over USB 2 a camera sends larger sizes at full rate in MJPEG than in raw YUYV,
# and simplejpeg decodes it as fast as OpenCV does. YUYV converts at OpenCV's speed too where
# libyuv is loaded (tools/bench_capture.py; numpy, its fallback, is ~10x slower).
PREFERRED = ("MJPG", "JPEG", "YUYV", "GREY")
BUFFERS = 2  # the driver's ring: small, the grabber keeps only the newest frame anyway


def _linuxpy(uri: str) -> Any:
    try:
        from linuxpy.video import device
    except ImportError as exc:
        raise SourceError(
            f"{uri}: V4L2 capture needs linuxpy, which this runtime lacks ({exc}); install "
            "edgekiln[camera] or freeze the target with it"
        ) from None
    return device


class V4L2Source:
    """A V4L2 capture device streaming through mmap buffers."""

    live = True

    def __init__(
        self,
        uri: str,
        device: str,
        fmt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        lp = _linuxpy(uri)
        self.uri, self.device = uri, device
        self._dev: Any = None
        self._cap: Any = None
        try:
            self._dev = lp.Device(device, blocking=False)
            self._dev.open()
            caps = self._dev.info.device_capabilities
            if lp.Capability.VIDEO_CAPTURE not in caps or lp.Capability.STREAMING not in caps:
                raise SourceError(
                    f"{uri}: {device} is not a streaming V4L2 capture device "
                    f"(capabilities {caps!r}); pick the camera's capture node (v4l2-ctl "
                    "--list-devices)"
                )
            self.fourcc, self.width, self.height = self._configure(lp, fmt, width, height)
            if fps:
                self._dev.set_fps(lp.BufferType.VIDEO_CAPTURE, fps)
            self.fps = self._granted_fps(lp)
            self._cap = lp.VideoCapture(self._dev, size=BUFFERS)
            self._cap.open()
        except SourceError:
            self.close()
            raise
        except (OSError, lp.V4L2Error, ValueError) as exc:
            self.close()
            raise SourceError(f"{uri}: cannot open {device} as a V4L2 camera: {exc}") from None
        except Exception as exc:  # a library bug on an odd driver: report it, never crash-loop
            self.close()
            raise SourceError(
                f"{uri}: linuxpy failed on {device}: {type(exc).__name__}: {exc}"
            ) from None
        self._index = 0

    def _granted_fps(self, lp: Any) -> float | None:
        """The frame rate the driver set (None: it does not say; not every driver has G_PARM)."""
        try:
            return float(self._dev.get_fps(lp.BufferType.VIDEO_CAPTURE))
        except (OSError, lp.V4L2Error, ZeroDivisionError):
            return None

    @property
    def description(self) -> str:
        """What was negotiated and what reads it, for the ``source_opened`` event."""
        converter = {"YUYV": "libyuv" if libyuv.available() else "numpy", "GREY": "numpy"}
        rate = f" at {self.fps:g} frames/s" if self.fps else ""
        return (
            f"{self.uri}: {self.device} {self.width}x{self.height} {self.fourcc}{rate} "
            f"(linuxpy, {converter.get(self.fourcc, 'simplejpeg')})"
        )

    def _configure(
        self, lp: Any, fmt: str | None, width: int | None, height: int | None
    ) -> tuple[str, int, int]:
        """Pick and set the pixel format; return (format, width, height) the driver granted."""
        capture = lp.BufferType.VIDEO_CAPTURE
        current = self._dev.get_format(capture)
        # Only the capture type's formats: linuxpy's ``info.formats`` walks every buffer type
        # and fails on some (UnboundLocalError on vivid's, linuxpy 0.25).
        offered = {
            CONVERTIBLE[f.pixel_format.name]
            for f in lp.iter_read_formats(self._dev, capture)
            if f.pixel_format.name in CONVERTIBLE
        }
        if fmt is not None:
            wanted = fmt.upper()
            if wanted not in offered:
                raise SourceError(
                    f"{self.uri}: {self.device} does not offer {wanted}; it offers "
                    f"{sorted(offered) or 'no format we can convert'}"
                )
        else:
            choices = [f for f in PREFERRED if f in offered]
            if not choices:
                raise SourceError(
                    f"{self.uri}: {self.device} offers no format we can convert "
                    f"(we read {', '.join(CONVERTIBLE.values())})"
                )
            wanted = choices[0]
        self._dev.set_format(
            capture, width or current.width, height or current.height, pixel_format=wanted
        )
        granted = self._dev.get_format(capture)
        name = CONVERTIBLE.get(granted.pixel_format.name)
        if name is None:
            raise SourceError(
                f"{self.uri}: asked {self.device} for {wanted}, it set "
                f"{granted.pixel_format.name}, which we cannot convert"
            )
        return name, int(granted.width), int(granted.height)

    def read(self) -> Frame | None:
        t0 = time.monotonic()
        try:
            raw = self._cap.buffer.frame_reader.read(timeout=READ_TIMEOUT_MS / 1000)
        except OSError as exc:  # unplugged: ENODEV; the grabber reports it, the pipeline reopens
            raise SourceError(f"{self.uri}: capture failed: {exc}") from None
        if raw is None:
            raise SourceError(f"{self.uri}: no frame for {READ_TIMEOUT_MS / 1000:.1f} s")
        try:
            image = to_bgr(self.fourcc, raw.data, self.width, self.height)
        except SourceError as exc:
            raise SourceError(f"{self.uri}: {exc}") from None
        t1 = time.monotonic()
        self._index += 1
        return Frame(image, "BGR", self._index - 1, t1, (t1 - t0) * 1000)

    def close(self) -> None:
        cap, dev = self._cap, self._dev
        self._cap = self._dev = None
        try:
            if cap is not None:
                cap.close()
        finally:
            if dev is not None and not dev.closed:
                dev.close()
