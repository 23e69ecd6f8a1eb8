"""Sources read through OpenCV: network streams and video files (and V4L2 when a
runtime carries OpenCV but not linuxpy). OpenCV is optional: a runtime without it gets a
:class:`SourceError` naming the missing library, never an ``ImportError``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from appliance.inference.errors import SourceError
from appliance.inference.sources.frame import (
    OPEN_TIMEOUT_MS,
    READ_TIMEOUT_MS,
    Frame,
    redact,
)


def _cv2(uri: str, what: str) -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise SourceError(
            f"{uri}: {what} needs OpenCV, which this runtime lacks ({exc}); use a V4L2 camera "
            "(v4l2:///dev/videoN, read with linuxpy) or an npz: source, or build the image "
            'with OpenCV (recipe: [runtime] extras = ["opencv"])'
        ) from None
    return cv2


class CvCaptureSource:
    """A cv2.VideoCapture: V4L2 camera, network stream or video file."""

    def __init__(self, uri: str, target: str, api: str, live: bool, realtime: bool = False) -> None:
        uri = redact(uri)  # messages, events and logs never show a camera's password
        cv2 = _cv2(uri, "a V4L2 camera" if api == "v4l2" else "a stream or video file")
        self.uri, self.live, self._realtime = uri, live or realtime, realtime
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            READ_TIMEOUT_MS,
        ]
        backend = cv2.CAP_V4L2 if api == "v4l2" else cv2.CAP_FFMPEG
        self._cap = cv2.VideoCapture(target, backend, params)
        if not self._cap.isOpened():
            raise SourceError(
                f"{uri}: cannot open ({api}); check the device/URL and that it is streaming"
            )
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._period = 1.0 / fps if realtime and 0 < fps < 1000 else 0.0
        self._next = time.monotonic()
        self._index = 0

    def read(self) -> Frame | None:
        if self._period:
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = max(self._next + self._period, time.monotonic() - self._period)
        t0 = time.monotonic()
        ok, image = self._cap.read()
        t1 = time.monotonic()
        if not ok or image is None:
            if self.live and not self._realtime:
                raise SourceError(
                    f"{self.uri}: stopped delivering frames (camera gone or stream ended)"
                )
            return None
        if image.ndim == 2:  # grey camera
            image = np.repeat(image[..., None], 3, axis=2)
        self._index += 1
        return Frame(image, "BGR", self._index - 1, t1, (t1 - t0) * 1000)

    def close(self) -> None:
        self._cap.release()
