"""GPT assembly: checked with sfdisk -J, the placed bytes, bmaptool copy, reproducibility."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from image.build.disk import (
    MIB,
    TYPE_ESP,
    PartitionTooSmall,
    assemble_disk,
    compress,
    standard_layout,
    write_bmap,
)

pytestmark = pytest.mark.integration


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, size in (("boot", 3), ("rootfs_a", 5), ("data", 2)):
        path = tmp_path / f"{name}.img"
        # Random head, zero tail: the zero tail must stay a hole (bmap) yet read back as zeros.
        path.write_bytes(os.urandom(size * MIB // 2) + bytes(size * MIB // 2))
        out[name] = path
    return out


def build(tmp_path: Path, images: dict[str, Path], name: str = "disk.img") -> Path:
    parts = standard_layout("amd64", 4, 8, 4, images)
    assemble_disk(tmp_path / name, parts, "generic-x86-64/1.0.0")
    return tmp_path / name


def test_table_read_by_sfdisk(tmp_path: Path, images: dict[str, Path]) -> None:
    disk = build(tmp_path, images)
    table = json.loads(
        subprocess.run(["sfdisk", "-J", str(disk)], capture_output=True, check=True).stdout
    )
    pt = table["partitiontable"]
    assert pt["label"] == "gpt"
    names = [p["name"] for p in pt["partitions"]]
    assert names == ["boot", "rootfs_a", "rootfs_b", "data"]
    assert pt["partitions"][0]["type"] == TYPE_ESP
    starts = [p["start"] * 512 for p in pt["partitions"]]
    assert starts == [1 * MIB, 5 * MIB, 13 * MIB, 21 * MIB]
    assert disk.stat().st_size == 26 * MIB
    # sgdisk's own verification of both GPT headers.
    subprocess.run(["sgdisk", "-v", str(disk)], check=True, capture_output=True)
    # The images are where the table says.
    with disk.open("rb") as handle:
        for name, start in (("boot", 1), ("rootfs_a", 5), ("data", 21)):
            handle.seek(start * MIB)
            assert handle.read(images[name].stat().st_size) == images[name].read_bytes()


def test_uuids_are_fixed_and_disk_is_byte_identical(
    tmp_path: Path, images: dict[str, Path]
) -> None:
    one = build(tmp_path, images, "one.img")
    two = build(tmp_path, images, "two.img")
    assert sha(one) == sha(two)
    other = tmp_path / "other.img"
    assemble_disk(other, standard_layout("amd64", 4, 8, 4, images), "generic-x86-64/1.0.1")

    def uuid(p: Path) -> str:
        out = subprocess.run(["sfdisk", "-J", str(p)], capture_output=True, check=True).stdout
        return json.loads(out)["partitiontable"]["id"]

    assert uuid(one) == uuid(two) != uuid(other)


def test_bmap_copy_reproduces_the_image(tmp_path: Path, images: dict[str, Path]) -> None:
    disk = build(tmp_path, images)
    bmap = write_bmap(disk, tmp_path / "disk.bmap")
    assert "<bmap version=" in bmap.read_text()
    # Holes: the zero halves and rootfs_b were never written.
    assert os.stat(disk).st_blocks * 512 < disk.stat().st_size
    copy = tmp_path / "copy.img"
    subprocess.run(
        ["bmaptool", "copy", "--bmap", str(bmap), str(disk), str(copy)],
        check=True,
        capture_output=True,
    )
    assert sha(copy) == sha(disk)
    # Compressed image + bmap, as a production line would use them.
    zst = compress(disk, tmp_path / "disk.img.zst")
    copy2 = tmp_path / "copy2.img"
    subprocess.run(
        ["bmaptool", "copy", "--bmap", str(bmap), str(zst), str(copy2)],
        check=True,
        capture_output=True,
    )
    assert sha(copy2) == sha(disk)


def test_too_large_image_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.img"
    big.write_bytes(bytes(9 * MIB))
    with pytest.raises(PartitionTooSmall, match="rootfs_a"):
        assemble_disk(tmp_path / "d.img", standard_layout("amd64", 4, 8, 4, {"rootfs_a": big}), "s")
