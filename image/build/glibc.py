"""Will a frozen runtime start on a root it did not come from? Its glibc needs against the root's.

PyInstaller bundles a program's libraries but not the C library: every ELF file of the runtime
binds versioned glibc symbols (``arc4random@GLIBC_2.36``) that the device's own libc must
define. A root supplied by the user (L4T: Ubuntu 22.04's glibc 2.35) can be older than the
Debian 12 root the arm64 runtime is frozen in (2.36), and the runtime would then fail on the
device before its first line of Python. The builder refuses that, naming the file and symbol
(docs/decisions.md §36).

The needs are read with binutils' ``objdump -T`` (any ELF machine); the root's version from
dpkg's record of ``libc6``, else from the version names its ``libc.so.6`` defines.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from image.errors import BuildError

Version = tuple[int, int]

_NEED = re.compile(r"\*UND\*\s+\S+\s+\(?GLIBC_(\d+)\.(\d+)(?:\.\d+)?\)?\s+(\S+)")
_DEFINED = re.compile(rb"GLIBC_2\.(\d+)\x00")
_ELF = b"\x7fELF"


class GlibcError(BuildError):
    """The runtime needs a newer glibc than the root it goes into."""


def _elf_files(tree: Path) -> list[Path]:
    out = []
    for path in sorted(tree.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as handle:
                if handle.read(4) == _ELF:
                    out.append(path)
    return out


def required(tree: Path) -> tuple[Version, str]:
    """The newest glibc version any ELF file under ``tree`` needs, and which file and symbol."""
    best: Version = (2, 0)
    where = ""
    for path in _elf_files(tree):
        listing = subprocess.run(
            ["objdump", "-T", str(path)], capture_output=True, text=True, check=False
        ).stdout
        for match in _NEED.finditer(listing):
            version = (int(match[1]), int(match[2]))
            if version > best:
                best, where = version, f"{path.relative_to(tree)}: {match[3]}"
    return best, where


def provided(root: Path) -> Version | None:
    """The glibc of a root filesystem: dpkg's ``libc6`` version, else its libc.so.6's."""
    status = root / "var/lib/dpkg/status"
    if status.is_file():
        for record in status.read_text(errors="replace").split("\n\n"):
            if re.search(r"^Package: libc6$", record, re.M):
                found = re.search(r"^Version: (?:\d+:)?(\d+)\.(\d+)", record, re.M)
                if found:
                    return int(found[1]), int(found[2])
    for libc in sorted(root.glob("usr/lib/*-linux-gnu/libc.so.6")):
        versions = [int(v) for v in _DEFINED.findall(libc.read_bytes())]
        if versions:
            return 2, max(versions)
    return None


def check(root: Path, runtime: Path, what: str) -> Version:
    """Refuse ``runtime`` for ``root`` (``what`` names it) when root's glibc is older."""
    need, where = required(runtime)
    have = provided(root)
    if have is None:
        raise GlibcError(
            f"{what}: cannot tell its glibc version (no libc6 in /var/lib/dpkg/status, no "
            "/usr/lib/<triplet>/libc.so.6); the frozen runtime needs glibc "
            f"{need[0]}.{need[1]} ({where})"
        )
    if have < need:
        raise GlibcError(
            f"{what} has glibc {have[0]}.{have[1]}, but the frozen runtime needs "
            f"{need[0]}.{need[1]} ({where}): it would not start on the device. Freeze the "
            "runtime where that glibc is (on the board itself: kiln freeze RECIPE -o DIR) "
            "and build with kiln build --runtime DIR/appliance"
        )
    return have
