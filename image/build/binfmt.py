"""Foreign binaries for an arm64 base root: binfmt_misc with the qemu-user interpreter.

mmdebstrap (like debootstrap's second stage) runs the target's maintainer scripts, and they
start further arm64 programs; only the kernel's binfmt_misc can hand each of them to
``qemu-aarch64-static``. Many build hosts have binfmt_misc in the kernel but not mounted:
as root we mount it and enable Debian's ``qemu-aarch64`` entry (qemu-user-static,
binfmt-support); otherwise the error says what to run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from image.build.fs import ToolError, run_tool
from image.errors import BuildError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
ENTRIES = {"arm64": "qemu-aarch64"}
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class ForeignArchError(BuildError):
    """The build host cannot run the target's binaries (no binfmt_misc entry for it)."""


def native(arch: str) -> bool:
    """Whether ``arch`` (Debian name) is the build host's own."""
    return HOST_ARCH.get(os.uname().machine) == arch


def _enabled(entry: str) -> bool:
    path = BINFMT_DIR / entry
    try:
        return path.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def ensure_binfmt(arch: str) -> None:
    """Make sure the kernel hands ``arch`` programs to qemu-user; mount/enable it as root."""
    if native(arch):
        return
    entry = ENTRIES.get(arch)
    if entry is None:
        raise ForeignArchError(f"target.arch {arch!r}: no qemu-user entry known for it")
    if _enabled(entry):
        return
    fix = (
        "as root: apt-get install qemu-user-static binfmt-support && "
        f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR} && update-binfmts --enable {entry}"
    )
    if os.geteuid() != 0:
        raise ForeignArchError(
            f"building a {arch} base root needs binfmt_misc entry {entry} "
            f"({BINFMT_DIR}/{entry} is not enabled); {fix}"
        )
    if shutil.which("update-binfmts") is None or shutil.which(f"{entry}-static") is None:
        raise ForeignArchError(f"{entry}-static or update-binfmts not found; {fix}")
    try:
        if not (BINFMT_DIR / "register").exists():
            run_tool(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)])
        run_tool(["update-binfmts", "--enable", entry])
    except ToolError as exc:
        raise ForeignArchError(f"cannot enable binfmt_misc entry {entry}: {exc}; {fix}") from None
    if not _enabled(entry):
        raise ForeignArchError(
            f"{BINFMT_DIR}/{entry} is still not enabled after enabling it; {fix}"
        )
