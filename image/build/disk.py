"""GPT disk images: an sfdisk script with fixed UUIDs, partitions placed with ``dd``, a .bmap.

The layout is docs/decisions.md §21: ``boot`` (ESP), ``rootfs_a``, ``rootfs_b``, ``data`` (last, so
it can grow to the disk's size on first boot). Every partition starts on a MiB boundary; the
disk and partition UUIDs are derived from the recipe and version, so the table is
byte-reproducible. Nothing is mounted and no loop device is used.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from image.build.fs import fs_uuid_for, run_tool
from image.errors import BuildError

log = logging.getLogger(__name__)
MIB = 1024 * 1024
SECTOR = 512

TYPE_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
TYPE_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TYPE_ROOT = {
    "amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # Linux root (x86-64)
    "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",  # Linux root (ARM64)
}
PARTITION_NAMES = ("boot", "rootfs_a", "rootfs_b", "data")


class PartitionTooSmall(BuildError):
    """A partition's content is larger than the partition."""


@dataclass(frozen=True)
class PartitionSpec:
    """One GPT partition: name, type GUID, size and (optionally) the image written into it."""

    name: str
    type_guid: str
    size_mib: int
    image: Path | None = None


@dataclass(frozen=True)
class Partition:
    """A partition as read back from a disk image's table (``sfdisk -J``)."""

    number: int
    name: str
    start: int  # bytes
    size: int  # bytes
    type_guid: str
    uuid: str


def standard_layout(
    arch: str, boot_mib: int, rootfs_mib: int, data_mib: int, images: dict[str, Path]
) -> list[PartitionSpec]:
    """The four partitions (docs/decisions.md §21), with the images to place into them."""
    return [
        PartitionSpec("boot", TYPE_ESP, boot_mib, images.get("boot")),
        PartitionSpec("rootfs_a", TYPE_ROOT[arch], rootfs_mib, images.get("rootfs_a")),
        PartitionSpec("rootfs_b", TYPE_ROOT[arch], rootfs_mib, images.get("rootfs_b")),
        PartitionSpec("data", TYPE_LINUX_DATA, data_mib, images.get("data")),
    ]


def sfdisk_script(parts: list[PartitionSpec], seed: str, first_mib: int = 1) -> str:
    """The sfdisk input: GPT label with fixed label-id and per-partition uuid= and name=."""
    lines = [
        "label: gpt",
        f"label-id: {str(fs_uuid_for(seed, 'disk')).upper()}",
        "unit: sectors",
        "first-lba: 2048",
        "sector-size: 512",
        "",
    ]
    start = first_mib * MIB // SECTOR
    for part in parts:
        sectors = part.size_mib * MIB // SECTOR
        part_uuid = str(fs_uuid_for(seed, "part", part.name)).upper()
        lines.append(
            f"start={start}, size={sectors}, type={part.type_guid}, "
            f'uuid={part_uuid}, name="{part.name}"'
        )
        start += sectors
    return "\n".join(lines) + "\n"


def disk_size(parts: list[PartitionSpec], first_mib: int = 1) -> int:
    """``first_mib`` before the first partition (GPT, a board's raw bootloader), the
    partitions, 1 MiB after (backup GPT)."""
    return (first_mib + 1 + sum(p.size_mib for p in parts)) * MIB


def read_table(image: Path) -> list[Partition]:
    """The partition table of a disk image, read with ``sfdisk -J``."""
    table = json.loads(run_tool(["sfdisk", "-J", str(image)]))["partitiontable"]
    sector = int(table.get("sectorsize", SECTOR))
    out = []
    for number, entry in enumerate(table.get("partitions", []), start=1):
        out.append(
            Partition(
                number=number,
                name=entry.get("name", ""),
                start=int(entry["start"]) * sector,
                size=int(entry["size"]) * sector,
                type_guid=entry["type"].upper(),
                uuid=entry.get("uuid", "").upper(),
            )
        )
    return out


def assemble_disk(
    out: Path, parts: list[PartitionSpec], seed: str, first_mib: int = 1
) -> list[Partition]:
    """Write a GPT disk image at ``out`` with each partition's image placed by ``dd``."""
    for part in parts:
        if part.image is not None and part.image.stat().st_size > part.size_mib * MIB:
            raise PartitionTooSmall(
                f"{part.image} ({part.image.stat().st_size / MIB:.1f} MiB) does not fit into "
                f"partition {part.name} ({part.size_mib} MiB); raise its size in the recipe"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with out.open("wb") as handle:
        handle.truncate(disk_size(parts, first_mib))
    run_tool(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "always", "-q", str(out)],
        input_text=sfdisk_script(parts, seed, first_mib),
    )
    table = read_table(out)
    by_name = {p.name: p for p in table}
    for part in parts:
        if part.image is None:
            continue
        placed = by_name[part.name]
        run_tool(
            [
                "dd", f"if={part.image}", f"of={out}", "bs=1M", f"seek={placed.start // MIB}",
                "conv=notrunc,sparse", "status=none",
            ]
        )  # fmt: skip
    return table


GPT_END = 34 * SECTOR  # protective MBR, GPT header and 128 partition entries


class BootloaderDoesNotFit(BuildError):
    """A board's raw bootloader overlaps the GPT or the first partition."""


def place_bootloader(out: Path, blob: Path, offset: int, first_mib: int) -> None:
    """Write a board's raw bootloader (e.g. i.MX ``flash.bin``) at byte ``offset`` of the disk,
    between the primary GPT and the first partition."""
    size = blob.stat().st_size
    if offset < GPT_END or offset + size > first_mib * MIB:
        raise BootloaderDoesNotFit(
            f"{blob} ({size} bytes) at {offset} bytes does not fit between the GPT "
            f"({GPT_END} bytes) and the first partition ({first_mib} MiB); set "
            "board.bootloader_offset_kib and board.first_partition_mib to the board's layout"
        )
    with out.open("r+b") as handle:
        handle.seek(offset)
        handle.write(blob.read_bytes())


def write_bmap(image: Path, bmap: Path) -> Path:
    """A bmaptool-compatible block map of ``image`` (mapped ranges + SHA-256 checksums)."""
    bmap.unlink(missing_ok=True)
    run_tool(["bmaptool", "create", "-o", str(bmap), str(image)])
    return bmap


def compress(image: Path, out: Path, level: int = 6) -> Path:
    """``zstd`` the image (multithreaded output is identical for any thread count)."""
    if shutil.which("zstd") is None:
        raise BuildError("zstd not found; install the zstd package")
    out.unlink(missing_ok=True)
    run_tool(["zstd", "-q", f"-{level}", "-T0", "--no-progress", str(image), "-o", str(out)])
    return out
