"""Open a bundle stream from a file path, ``-`` (stdin) or an HTTP(S) URL."""

from __future__ import annotations

import contextlib
import sys
from typing import BinaryIO

from appliance.ota.errors import SourceError

TIMEOUT_S = 60


def open_stream(src: str, stack: contextlib.ExitStack) -> tuple[BinaryIO, str]:
    """(stream, label) for ``src``; the stream only needs ``read(n)`` and is closed by ``stack``."""
    if src == "-":
        return sys.stdin.buffer, "stdin"
    if src.startswith(("http://", "https://")):
        import urllib.error  # only here: a file install does not pay for it

        from appliance.ota.http import ResumingHTTPStream

        try:
            stream = ResumingHTTPStream(src, timeout_s=TIMEOUT_S)
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"cannot download {src}: {exc}") from exc
        return stack.enter_context(stream), src  # type: ignore[return-value]
    try:
        return stack.enter_context(open(src, "rb")), src
    except OSError as exc:
        raise SourceError(f"cannot open bundle {src}: {exc.strerror}") from exc
