"""The build cache on disk: used-marks, pruning, and deletion that never crosses a mount.

Each stage keeps its results under ``<cache>/<kind>/<key>/``. Every new key (a code, model or
recipe change) adds an entry, so without pruning the cache grows by a slot image per build. After
a stage stores a result, :func:`prune` keeps the ``keep`` most recently used entries of that kind
(an entry is "used" when it is created or taken from the cache: :func:`touch`).

:func:`remove_tree` is the only way the builder deletes a cache or scratch tree: mmdebstrap in root
mode bind-mounts ``/proc``, ``/sys``, ``/dev/pts`` and ``/dev/shm`` into the tree it builds and
leaves them mounted when it is killed, and ``shutil.rmtree`` would then walk into the host's own
``/dev/shm``. So mounts under the tree are unmounted first, and the deletion is refused if any
remain.

Several builds may share one cache (two ``kiln build`` runs, the test suite's two workers). Two
lock files beside each entry (``.<key>.fill``, ``.<key>.use``; ``fcntl.flock``, released by the
kernel when a process dies) keep it whole:

- :func:`filling` holds the entry's *fill* lock while the caller checks for a hit and, on a
  miss, builds the entry in a scratch folder and swaps it in by rename: a second build of the
  same key waits and then finds the entry complete; nothing is ever written into an entry
  another process may be reading;
- every entry handed out is *leased* (a shared lock on ``.use``) until the end of the caller's
  :func:`leases` block (a whole ``kiln build``), and :func:`prune` deletes only entries nobody
  holds: a build never loses a base, runtime or slot it is still using to another's pruning.

The last process to let go of an entry deletes its lock files: a cache at rest holds none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from image.errors import BuildError

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
KEY_NAME = re.compile(r"[0-9a-f]{16,64}")


class MountedTreeError(BuildError):
    """A tree to delete still has file systems mounted inside it."""


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(tree: Path, mountinfo: Path = MOUNTINFO) -> list[Path]:
    """Mount points at or below ``tree``, deepest first (the order to unmount them in)."""
    try:
        text = mountinfo.read_text()
    except OSError:
        return []
    root = os.path.realpath(tree)
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point == root or point.startswith(root.rstrip("/") + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def remove_tree(tree: Path) -> None:
    """Delete ``tree`` (if it exists) after unmounting whatever is mounted inside it."""
    if not tree.exists() and not tree.is_symlink():
        return
    for point in mounts_under(tree):
        log.warning("unmounting %s, left mounted by an interrupted build", point)
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
    left = mounts_under(tree)
    if left:
        raise MountedTreeError(
            f"refusing to delete {tree}: still mounted inside it: "
            + ", ".join(str(p) for p in left)
            + "; unmount them (umount --lazy PATH) and retry"
        )
    if tree.is_dir() and not tree.is_symlink():
        shutil.rmtree(tree)
    else:
        tree.unlink()


def commit(tmp: Path, entry: Path, summary: dict[str, Any]) -> None:
    """Finish an entry built in ``tmp``: write its summary.json and completion mark, swap it in."""
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (tmp / "complete").write_text("ok\n")
    remove_tree(entry)
    os.replace(tmp, entry)


def _lock_file(entry: Path, role: str) -> Path:
    """``<kind>/.<key>.<role>``: beside the entry, so it outlives the entry's replacement."""
    return entry.with_name(f".{entry.name}.{role}")


def _lock(path: Path, operation: int) -> int | None:
    """``flock(operation)`` on ``path`` (made if missing); the open descriptor holds the lock.

    None when ``LOCK_NB`` was asked for and another holds it. :func:`prune` deletes lock files
    (under their exclusive lock): a lock taken on a file that was deleted meanwhile is dropped
    and taken again on the current one.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


def _wait_for(path: Path, operation: int) -> int:
    """:func:`_lock` without ``LOCK_NB``: waits as long as another process holds it."""
    fd = _lock(path, operation)
    assert fd is not None  # only LOCK_NB gives up
    return fd


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (made if missing) for the block: for a
    check-then-create outside the entries (the development signing key)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = _wait_for(lock_file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def _release(entry: Path, use: int) -> None:
    """Drop a lease; the last one out deletes the lock files (the cache holds none at rest)."""
    os.close(use)
    last = _lock(_lock_file(entry, "use"), fcntl.LOCK_EX | fcntl.LOCK_NB)
    if last is None:
        return  # another process uses or fills it: it cleans up
    try:
        # Safe: whoever waits for either file holds (or waits for) .use, and _lock takes
        # the lock again on a new file when the one it got was deleted meanwhile.
        for role in ("fill", "use"):
            _lock_file(entry, role).unlink(missing_ok=True)
    finally:
        os.close(last)


#: open leases (entry, descriptor with a shared lock on its ``.use`` file), innermost block last
_LEASES: list[list[tuple[Path, int]]] = []


@contextlib.contextmanager
def leases() -> Iterator[None]:
    """Keep every entry :func:`filling` hands out inside this block from being pruned (by this
    or any other process) until the block ends. Without it an entry is protected only while its
    ``filling`` block runs."""
    held: list[tuple[Path, int]] = []
    _LEASES.append(held)
    try:
        yield
    finally:
        _LEASES.remove(held)
        for entry, use in held:
            _release(entry, use)


@contextlib.contextmanager
def filling(entry: Path, marker: str = "complete") -> Iterator[bool]:
    """Yield whether ``entry`` is complete (``entry/marker`` exists): a hit, marked as used.

    On a miss the caller holds the entry's fill lock for the whole block: it builds the entry
    beside it (a scratch folder in the same kind folder) and swaps it in by rename, writing
    ``marker`` last; another process filling the same key waits here, then gets a hit. The
    entry stays leased (:func:`leases`) after the block.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    use = _wait_for(_lock_file(entry, "use"), fcntl.LOCK_SH)
    try:
        # A complete entry stays complete while leased: only prune deletes, and not this one.
        if (entry / marker).exists():
            touch(entry)
            yield True
        else:
            fill = _wait_for(_lock_file(entry, "fill"), fcntl.LOCK_EX)
            try:
                hit = (entry / marker).exists()  # filled by another process while we waited
                if hit:
                    touch(entry)
                yield hit
            finally:
                os.close(fill)
    except BaseException:
        _release(entry, use)
        raise
    if _LEASES:
        _LEASES[-1].append((entry, use))
    else:
        _release(entry, use)


def scratch(entry: Path) -> Path:
    """A new empty folder beside ``entry`` to build it in (see :func:`commit`)."""
    return Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))


@contextlib.contextmanager
def cached_file(entry: Path, name: str, keep: int) -> Iterator[tuple[Path, Path | None]]:
    """``(entry/name, where to write it)``: one file cached with its sha256 (``digest``).

    On a hit where to write is None. On a miss the block writes the file into a scratch folder;
    at its end the digest is added, the folder swapped in as the entry and the kind pruned to
    ``keep`` entries.
    """
    with filling(entry) as hit:
        if hit:
            yield entry / name, None
        else:
            tmp = scratch(entry)
            try:
                yield entry / name, tmp / name
                digest = hashlib.sha256()
                with (tmp / name).open("rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                (tmp / "digest").write_text(digest.hexdigest() + "\n")
                (tmp / "complete").write_text("ok\n")
                remove_tree(entry)  # an incomplete earlier attempt
                tmp.rename(entry)
            finally:
                remove_tree(tmp)
    if not hit:
        prune(entry.parent, keep)


def touch(entry: Path) -> None:
    """Mark a cache entry as just used (pruning keeps the most recently used)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(entry)


def prune(kind_dir: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recently used entries of one kind; returns the deleted.

    Entries are the sub-folders named by a hex content key; anything else is left alone.
    """
    if not kind_dir.is_dir():
        return []
    # Only entries named by a content key: other things may share the folder (the arm64 root
    # and site-packages of image.freeze.foreign live beside the frozen runtimes).
    entries = [e for e in kind_dir.iterdir() if e.is_dir() and KEY_NAME.fullmatch(e.name)]

    def mtime(e: Path) -> float:
        try:
            return e.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    entries.sort(key=mtime, reverse=True)
    removed = []
    for old in entries[keep:]:
        use = _lock(_lock_file(old, "use"), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if use is None:
            log.info("cache: kept %s: a build is using it", old)
            continue
        try:
            remove_tree(old)
            for role in ("fill", "use"):
                _lock_file(old, role).unlink(missing_ok=True)
        except FileNotFoundError:  # a parallel build removed it first
            continue
        finally:
            os.close(use)
        removed.append(old)
        log.info("cache: pruned %s", old)
    return removed
