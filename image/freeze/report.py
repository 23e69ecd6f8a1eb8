"""Digests and size reports of a frozen onedir tree.

The tree digest covers every entry's relative path, kind, executable bit and content (or link
target), never timestamps or owners: two builds are "identical" when this digest matches. The size
report attributes each file to the package that brought it, so it is clear what dominates.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

MB = 1_000_000

# Directories PyInstaller places in _internal/ whose name is not the import name of the package.
_ALIASES: dict[str, str] = {
    "opencv_python_headless": "cv2",
    "opencv_python": "cv2",
    "lib-dynload": "python (extension modules)",
    "base_library.zip": "python (stdlib)",
}


def file_digests(root: Path) -> dict[str, str]:
    """Map each entry's path relative to *root* to a digest of its kind, mode bit and content."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                h = hashlib.sha256()
                with path.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                exe = "x" if st.st_mode & stat.S_IXUSR else "-"
                out[rel] = f"file:{exe}:{h.hexdigest()}"
    return out


def tree_digest(root: Path) -> str:
    """One sha256 over :func:`file_digests` of *root* (``sha256:<hex>``)."""
    return digest_of(file_digests(root))


def digest_of(entries: dict[str, str]) -> str:
    """Combine per-entry digests into one, in sorted path order."""
    h = hashlib.sha256()
    for rel in sorted(entries):
        h.update(f"{rel}\0{entries[rel]}\n".encode())
    return "sha256:" + h.hexdigest()


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Paths present in only one tree or with different content, sorted."""
    return sorted(p for p in a.keys() | b.keys() if a.get(p) != b.get(p))


@dataclass
class SizeReport:
    """Bytes of a onedir tree, per package and the largest files."""

    target: str
    total_bytes: int
    packages: dict[str, int] = field(default_factory=dict)  # largest first
    largest_files: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> bytes:
        """Stable JSON (sorted keys) for the file written next to the runtime."""
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"

    def to_text(self) -> str:
        """A human-readable table: total, MB per package, the ten largest files."""
        lines = [f"frozen runtime for {self.target}: {self.total_bytes / MB:.1f} MB", ""]
        lines.append(f"{'package':32} {'MB':>8} {'share':>6}")
        for name, size in self.packages.items():
            share = 100 * size / max(self.total_bytes, 1)
            lines.append(f"{name:32} {size / MB:8.1f} {share:5.1f}%")
        lines += ["", "largest files:"]
        lines += [f"  {size / MB:7.1f} MB  {rel}" for rel, size in self.largest_files]
        return "\n".join(lines) + "\n"


def package_of(rel: str) -> str:
    """The package a file in the onedir tree belongs to (by its first path part under _internal)."""
    parts = rel.split("/")
    if parts[0] != "_internal" or len(parts) == 1:
        return "bootloader (executable)"
    head = parts[1]
    if len(parts) == 2:
        if head in _ALIASES:
            return _ALIASES[head]
        if head.startswith("libpython"):
            return "python (libpython)"
        return "shared libraries (top level)"
    if head.endswith(".dist-info"):
        return "metadata (.dist-info)"
    head = head.removesuffix(".libs")
    return _ALIASES.get(head, head)


def size_report(root: Path, target: str, top: int = 10) -> SizeReport:
    """Measure the onedir tree at *root* (apparent sizes of regular files; links count 0)."""
    per_pkg: dict[str, int] = {}
    files: list[tuple[str, int]] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            size = path.stat().st_size
            rel = path.relative_to(root).as_posix()
            files.append((rel, size))
            pkg = package_of(rel)
            per_pkg[pkg] = per_pkg.get(pkg, 0) + size
    files.sort(key=lambda item: (-item[1], item[0]))
    ordered = dict(sorted(per_pkg.items(), key=lambda item: (-item[1], item[0])))
    return SizeReport(target, sum(s for _, s in files), ordered, files[:top])
