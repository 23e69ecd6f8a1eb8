"""Image folders: every picture of a directory in name order (demos, accuracy checks).

JPEGs decode with OpenCV when the runtime has it, else with simplejpeg (libjpeg-turbo, in every
target's runtime); PNG/BMP need OpenCV, and a folder holding them in a runtime without it is a
:class:`SourceError` at open, not a silently empty source.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.inference.errors import SourceError
from appliance.inference.sources.frame import IMAGE_SUFFIXES, Frame
from appliance.inference.sources.pixels import mjpeg_to_bgr

JPEG_SUFFIXES = (".jpg", ".jpeg")


class ImageFolderSource:
    """Every image file of a directory, in name order."""

    live = False

    def __init__(self, uri: str, folder: Path) -> None:
        self.uri = uri
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} files in this folder")
        self._cv2: Any = None
        try:
            import cv2

            self._cv2 = cv2
        except ImportError:
            try:
                import simplejpeg  # noqa: F401
            except ImportError:
                raise SourceError(
                    f"{folder}: decoding images needs OpenCV or simplejpeg; this runtime has "
                    "neither (install edgekiln[camera])"
                ) from None
            others = [p.name for p in self._files if p.suffix.lower() not in JPEG_SUFFIXES]
            if others:
                raise SourceError(
                    f"{folder}: {others[0]} (and {len(others) - 1} more) need OpenCV, which "
                    "this runtime lacks; convert them to JPEG or build the image with OpenCV "
                    '(recipe: [runtime] extras = ["opencv"])'
                ) from None
        self._it = iter(enumerate(self._files))

    def read(self) -> Frame | None:
        for i, path in self._it:
            t0 = time.monotonic()
            if self._cv2 is not None:
                image = self._cv2.imread(str(path), self._cv2.IMREAD_COLOR)
            else:
                try:
                    image = mjpeg_to_bgr(path.read_bytes())
                except (OSError, SourceError):
                    image = None
            t1 = time.monotonic()
            if image is None:  # unreadable file: skip it, a folder is not a camera
                continue
            return Frame(image, "BGR", i, t1, (t1 - t0) * 1000)
        return None

    def close(self) -> None:
        pass
