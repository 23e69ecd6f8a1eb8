"""Writes that survive a power cut: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    On any exception the temp file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        # On vfat (the ESP) a file's directory entry is part of its inode: fsync of the
        # directory alone leaves the renamed entry unwritten while the replaced file's
        # clusters are already free, so after a power cut neither old nor new content is
        # reachable. Syncing the renamed file writes its entry (a no-op cost on ext4).
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def read_optional(path: Path, error: type[Exception]) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist.

    Any other OS error raises ``error`` naming the file, so a missing file (a fresh device)
    and an unreadable one (a damaged data partition) are never confused.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
