"""An HTTP(S) bundle stream that survives dropped connections by resuming with ``Range``.

The bundle reader only calls ``read(n)``. When the connection breaks mid-body, this stream
reopens the URL asking for ``Range: bytes=<offset>-`` and continues where it stopped (a server
that ignores ranges answers 200: the bytes already delivered are then read and dropped). A
``Content-Range`` that does not start at the offset, or an ``ETag``/``Last-Modified`` that
changed, is refused: the reader would otherwise see a splice of two files (it would refuse
that too, by digest, but this names the cause). Attempts back off exponentially.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from appliance.ota.errors import SourceError

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")
_BROKEN = (OSError, http.client.HTTPException, urllib.error.URLError)


class ResumingHTTPStream:
    """``read(n)`` over an HTTP(S) body, reconnecting with ``Range`` after a failure."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 8,
        backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.offset = 0
        self.resumes = 0
        self._validator: tuple[str | None, str | None] | None = None
        self._response: http.client.HTTPResponse | None = None
        self._open()

    def _open(self) -> None:
        request = urllib.request.Request(self.url)  # noqa: S310 - the scheme is checked by the caller
        if self.offset:
            request.add_header("Range", f"bytes={self.offset}-")
        response = urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310
        validator = (response.headers.get("ETag"), response.headers.get("Last-Modified"))
        if self._validator is None:
            self._validator = validator
        elif validator != self._validator and any(validator):
            response.close()
            raise SourceError(f"{self.url} changed while downloading (ETag/Last-Modified)")
        if self.offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != self.offset:
                response.close()
                raise SourceError(
                    f"{self.url}: asked to resume at byte {self.offset}, the server sent "
                    f"{response.headers.get('Content-Range')!r}"
                )
        elif self.offset:
            # No range support: read and drop what we already have.
            skip = self.offset
            while skip:
                got = response.read(min(skip, 1 << 20))
                if not got:
                    raise SourceError(f"{self.url} is shorter than before ({self.offset} bytes)")
                skip -= len(got)
        self._response = response

    def read(self, n: int = -1) -> bytes:
        attempt = 0
        while True:
            try:
                if self._response is None:
                    self._open()
                assert self._response is not None
                data = self._response.read(n)
                if n and n > 0 and not data and self._incomplete():
                    raise http.client.IncompleteRead(b"")
            except SourceError:
                raise
            except _BROKEN as exc:
                attempt += 1
                self._close_response()
                if attempt > self.retries:
                    raise SourceError(
                        f"{self.url}: download failed at byte {self.offset} after "
                        f"{self.retries} retries: {exc}"
                    ) from exc
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "download of %s broke at byte %d (%s); resuming in %.1f s",
                    self.url,
                    self.offset,
                    exc,
                    delay,
                )
                self.sleep(delay)
                self.resumes += 1
                continue
            self.offset += len(data)
            return data

    def _incomplete(self) -> bool:
        """An empty read before Content-Length was reached is a dropped connection."""
        assert self._response is not None
        length = self._response.length  # bytes left per Content-Length, None if unknown
        return bool(length)

    def _close_response(self) -> None:
        if self._response is not None:
            with contextlib.suppress(*_BROKEN):
                self._response.close()
            self._response = None

    def close(self) -> None:
        self._close_response()

    def __enter__(self) -> ResumingHTTPStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
