"""Write a disk image to a block device or file, bmap-aware, then read it back and verify.

Only the ranges the .bmap lists are written (holes stay untouched on a device, sparse in a
file); each range's SHA-256 from the bmap is checked on the bytes read from the image before
writing and again on the bytes read back from the target after ``fsync`` (with the page cache
dropped, so a block device is really re-read). Without a bmap the whole image is written and
compared. A mounted device, or the disk holding ``/``, is refused unless forced.
"""

from __future__ import annotations

import hashlib
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from image.errors import BuildError

CHUNK = 4 << 20
MAX_BMAP = 64 << 20


class FlashError(BuildError):
    """The image cannot be written, or the target is unsafe to write."""


class FlashVerifyError(FlashError):
    """What was read back differs from the image."""


@dataclass(frozen=True)
class BlockMap:
    """The parts of a .bmap that matter: image size, block size, mapped ranges with digests."""

    image_size: int
    block_size: int
    ranges: tuple[tuple[int, int, str | None], ...]  # (first block, last block, sha256)

    @property
    def mapped_bytes(self) -> int:
        return sum(min((last + 1) * self.block_size, self.image_size) - first * self.block_size
                   for first, last, _ in self.ranges)  # fmt: skip


def parse_bmap(path: Path) -> BlockMap:
    """Read a bmaptool (version 2.x) block map."""
    data = path.read_bytes()
    if len(data) > MAX_BMAP or b"<!ENTITY" in data:
        raise FlashError(f"{path}: not a bmap file (too large or uses XML entities)")
    try:
        root = ET.fromstring(data)  # noqa: S314 - size-limited, entity-free, our own format
        image_size = int(root.findtext("ImageSize", "").strip())
        block_size = int(root.findtext("BlockSize", "").strip())
        ctype = (root.findtext("ChecksumType") or "sha256").strip()
        ranges = []
        for rng in root.iter("Range"):
            text = (rng.text or "").strip()
            first, _, last = text.partition("-")
            digest = rng.get("chksum")
            ranges.append((int(first), int(last or first), digest if ctype == "sha256" else None))
    except (ET.ParseError, ValueError) as exc:
        raise FlashError(f"{path}: cannot parse bmap: {exc}") from None
    return BlockMap(image_size, block_size, tuple(ranges))


def _dev_of(path: Path) -> tuple[int, int] | None:
    st = path.stat()
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISBLK(st.st_mode) else None


def _whole_disk(major: int, minor: int) -> str:
    """Name of the whole disk a block device (or partition) belongs to, via sysfs."""
    real = Path(os.path.realpath(f"/sys/dev/block/{major}:{minor}"))
    return real.parent.name if (real / "partition").exists() else real.name


def mounted_disks(mountinfo: str) -> dict[str, str]:
    """Whole disks with a mounted file system -> one of its mount points (from mountinfo)."""
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        major, minor = (int(x) for x in fields[2].split(":"))
        if major:  # 0:N are virtual file systems (tmpfs, overlay, proc)
            out.setdefault(_whole_disk(major, minor), fields[4])
    return out


def unsafe_reason(disk: str, root_disk: str, mounted: dict[str, str]) -> str | None:
    """Why writing to ``disk`` would be unsafe, or None."""
    if disk == root_disk:
        return f"it is the disk holding / ({disk})"
    if disk in mounted:
        return f"{disk} has a mounted file system at {mounted[disk]}; unmount it first"
    return None


def check_target_safe(target: Path, *, force: bool) -> None:
    """Refuse a mounted block device, or the disk that holds ``/``, unless ``force``."""
    dev = _dev_of(target) if target.exists() else None
    if dev is None or force:
        return
    root_dev = os.stat("/").st_dev
    reason = unsafe_reason(
        _whole_disk(*dev),
        _whole_disk(os.major(root_dev), os.minor(root_dev)),
        mounted_disks(Path("/proc/self/mountinfo").read_text()),
    )
    if reason:
        raise FlashError(f"refusing to write {target}: {reason} (or pass --force)")


def _open_image(image: Path) -> BinaryIO:
    if image.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(image.open("rb"), closefd=True)
    return image.open("rb")


def _ranges(bmap: BlockMap | None, size: int) -> Iterator[tuple[int, int, str | None]]:
    """(start byte, length, sha256 or None) of what to write, in ascending order."""
    if bmap is None:
        yield 0, size, None
        return
    for first, last, digest in bmap.ranges:
        start = first * bmap.block_size
        yield start, min((last + 1) * bmap.block_size, bmap.image_size) - start, digest


def default_bmap(image: Path) -> Path | None:
    name = image.name.removesuffix(".zst").removesuffix(".img")
    path = image.with_name(name + ".bmap")
    return path if path.exists() else None


def flash(
    image: Path,
    target: Path,
    *,
    bmap_path: Path | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write ``image`` (``.img`` or ``.img.zst``) to ``target``; verify by reading back."""
    check_target_safe(target, force=force)
    bmap = parse_bmap(bmap_path) if bmap_path else None
    if bmap is None and image.name.endswith(".zst"):
        raise FlashError(f"{image}: a compressed image needs its .bmap (pass --bmap)")
    size = bmap.image_size if bmap else image.stat().st_size
    is_block = target.exists() and _dev_of(target) is not None
    total = bmap.mapped_bytes if bmap else size
    done = 0
    flags = os.O_RDWR | (0 if is_block else os.O_CREAT)
    fd = os.open(target, flags, 0o644)
    whole = hashlib.sha256()
    try:
        if not is_block:
            os.ftruncate(fd, 0)  # a file target becomes exactly the image, holes included
            os.ftruncate(fd, size)
        with _open_image(image) as src:
            pos = 0
            for start, length, digest in _ranges(bmap, size):
                _skip(src, start - pos)
                h = hashlib.sha256()
                left = length
                while left:
                    chunk = src.read(min(CHUNK, left))
                    if not chunk:
                        raise FlashError(
                            f"{image} ends at byte {start + length - left}, before the bmap says"
                        )
                    h.update(chunk)
                    if bmap is None:
                        whole.update(chunk)
                    os.pwrite(fd, chunk, start + length - left)
                    left -= len(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                pos = start + length
                if digest and h.hexdigest() != digest:
                    raise FlashError(
                        f"{image}: bytes {start}..{pos} do not match the bmap checksum; "
                        "the image is damaged"
                    )
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # read back from the medium
        _verify(fd, bmap, size, whole.hexdigest(), target)
    finally:
        os.close(fd)
    return {"written": done, "image_size": size}


def _skip(src: BinaryIO, count: int) -> None:
    while count > 0:
        got = src.read(min(CHUNK, count))
        if not got:
            raise FlashError("image ended early while skipping a hole")
        count -= len(got)


def _verify(fd: int, bmap: BlockMap | None, size: int, whole: str, target: Path) -> None:
    for start, length, digest in _ranges(bmap, size):
        h = hashlib.sha256()
        off = start
        while off < start + length:
            chunk = os.pread(fd, min(CHUNK, start + length - off), off)
            if not chunk:
                raise FlashVerifyError(f"{target} is shorter than the image (ends at {off})")
            h.update(chunk)
            off += len(chunk)
        want = digest if bmap is not None else whole
        if want and h.hexdigest() != want:
            raise FlashVerifyError(
                f"{target}: read-back of bytes {start}..{start + length} differs from the image"
            )
