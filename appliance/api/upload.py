"""A bundle upload, streamed from the request body straight into the installer.

The body is handed to :func:`appliance.ota.installer.install` as its stream, exactly as a file
or stdin would be: the manifest and signature are verified before any payload byte is written.
:class:`BodyStream` never reads past ``Content-Length``; a client that sends nothing for the
socket timeout makes ``read`` raise :class:`UploadStalled`, which the installer propagates, so
the slot is left as for any refused or truncated bundle (marked bad, the committed slot boots).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from appliance.api.errors import ApiError

MAX_READ = 4 << 20


class UploadStalled(ApiError):
    """The client sent nothing for the stall timeout, or dropped the connection."""


class BodyStream:
    """At most ``length`` bytes of ``rfile``; stalls and early ends become errors."""

    def __init__(
        self, rfile: BinaryIO, length: int, progress: Callable[[int], None] | None = None
    ) -> None:
        self._rfile = rfile
        self.length = length
        self.received = 0
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        left = self.length - self.received
        if left <= 0:
            return b""
        # Callers ask for exact sizes; "all of it" is capped so no read buffers a whole bundle.
        n = min(left, MAX_READ) if n is None or n < 0 else min(n, left, MAX_READ)
        try:
            data = self._rfile.read(n)
        except TimeoutError as exc:
            raise UploadStalled(
                f"the client sent nothing for the stall timeout after {self.received} of "
                f"{self.length} bytes: install abandoned"
            ) from exc
        except OSError as exc:
            raise UploadStalled(
                f"the connection broke after {self.received} of {self.length} bytes ({exc}): "
                "install abandoned"
            ) from exc
        if not data:
            raise UploadStalled(
                f"the client closed the connection after {self.received} of {self.length} "
                "bytes: install abandoned"
            )
        self.received += len(data)
        if self._progress is not None:
            self._progress(self.received)
        return data
