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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
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
        try:
            remove_tree(old)
        except FileNotFoundError:  # a parallel build removed it first
            continue
        removed.append(old)
        log.info("cache: pruned %s", old)
    return removed
