"""A bundle file on local storage (a USB stick, a typed path), opened once from check to install.

What was checked is what is installed. The file is opened once, without following a symbolic
link and only if it is a regular file (a FIFO or device node could block, or hand out other bytes
on every read). The head that was authenticated and shown (manifest + signature) is kept in
memory, and the install reads that pinned head followed by the rest of the same open file. The
payload bytes are checked against the pinned manifest's chunk digests as they stream, so replacing
the file, or rewriting it in place, between the check and the install can never install another
release than the one shown: at worst the install fails with a digest error.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from appliance.errors import ApplianceError

if TYPE_CHECKING:
    from appliance.bundle import Policy
    from appliance.bundle.verified import VerifiedBundle


class LocalBundleError(ApplianceError):
    """A local bundle path is a symbolic link, not a regular file, or cannot be opened."""


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading: a regular file reached without a final symbolic link."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LocalBundleError(
                f"{path} is a symbolic link: bundles are read only from regular files; "
                "copy the bundle itself there"
            ) from None
        raise LocalBundleError(f"cannot open {path}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise LocalBundleError(
                f"{path} is not a regular file ({_kind(mode)}): bundles are read only from "
                "regular files; copy the bundle itself there"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def sha256_of(stream: BinaryIO) -> str:
    """sha256 of the whole open file (read from its start, left positioned at its start)."""
    stream.seek(0)
    digest = hashlib.sha256()
    while block := stream.read(1 << 20):
        digest.update(block)
    stream.seek(0)
    return digest.hexdigest()


class _Recording(io.RawIOBase):
    """Reads from ``stream`` and keeps every byte read (the bundle head: a few KiB)."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream
        self.head = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.head += data
        return len(data)


class HashingStream(io.RawIOBase):
    """``head`` from memory, then the rest of ``rest``; every byte handed out is hashed."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._at = 0
        self._rest = rest
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._at < len(self._head):
            data = self._head[self._at : self._at + len(buffer)]
            self._at += len(data)
        else:
            data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        self._digest.update(data)
        return len(data)

    def hexdigest(self) -> str:
        """sha256 of the bytes read so far (all of them once the installer reached the end)."""
        return self._digest.hexdigest()


class PinnedBundle:
    """A bundle file authenticated once; :meth:`install_stream` gives exactly those bytes again."""

    def __init__(self, path: Path, policy: Policy) -> None:
        from appliance.bundle import open_bundle

        self.path = path
        self._file = open_regular(path)
        try:
            recording = _Recording(self._file)
            self.bundle: VerifiedBundle = open_bundle(recording, policy, path.name)  # type: ignore[arg-type]
        except BaseException:
            self._file.close()
            raise
        self._head = bytes(recording.head)

    def install_stream(self) -> HashingStream:
        """The pinned head, then the rest of the same open file (not the path again)."""
        self._file.seek(len(self._head))
        return HashingStream(self._head, self._file)

    def close(self) -> None:
        """Close the open file."""
        self._file.close()
