"""kiln flash: bmap-aware write to a file, read-back verification, refusal of unsafe targets."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from image.build.disk import MIB, assemble_disk, compress, standard_layout, write_bmap
from image.flash import (
    FlashError,
    check_target_safe,
    flash,
    mounted_disks,
    parse_bmap,
    unsafe_reason,
)

pytestmark = pytest.mark.integration
KILN = Path(sys.executable).parent / "kiln"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    part = tmp_path / "rootfs.img"
    part.write_bytes(os.urandom(MIB) + bytes(2 * MIB) + os.urandom(MIB // 2))
    out = tmp_path / "disk.img"
    assemble_disk(out, standard_layout("amd64", 2, 6, 2, {"rootfs_a": part}), "flash-test")
    write_bmap(out, tmp_path / "disk.bmap")
    return out


def test_bmap_flash_to_file_matches_image(tmp_path: Path, image: Path) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(b"\xff" * (20 * MIB))  # stale bytes must not survive in a file target
    result = flash(image, target, bmap_path=tmp_path / "disk.bmap")
    assert sha(target) == sha(image)
    bmap = parse_bmap(tmp_path / "disk.bmap")
    assert result["written"] == bmap.mapped_bytes < image.stat().st_size


def test_flash_compressed_image_and_cli(tmp_path: Path, image: Path) -> None:
    zst = compress(image, tmp_path / "disk.img.zst")
    target = tmp_path / "t.img"
    out = subprocess.run(
        [str(KILN), "flash", str(zst), str(target), "--bmap", str(tmp_path / "disk.bmap")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "read-back verified" in out.stdout
    assert sha(target) == sha(image)


def test_flash_without_bmap_writes_everything(tmp_path: Path, image: Path) -> None:
    target = tmp_path / "t.img"
    result = flash(image, target)
    assert result["written"] == image.stat().st_size
    assert sha(target) == sha(image)


def test_damaged_image_is_refused_by_bmap_checksum(tmp_path: Path, image: Path) -> None:
    with image.open("r+b") as handle:
        handle.seek(3 * MIB + 100)  # inside rootfs_a's random head
        handle.write(b"\0garbage\0")
    with pytest.raises(FlashError, match="bmap checksum"):
        flash(image, tmp_path / "t.img", bmap_path=tmp_path / "disk.bmap")


def test_disk_holding_root_is_refused(tmp_path: Path) -> None:
    # A device node for the disk under / (we run as root in CI; the container has no /dev/vda).
    dev = os.stat("/").st_dev
    if not Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").exists():
        pytest.skip("/ is not on a block device")
    node = tmp_path / "rootdisk"
    try:
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(os.major(dev), os.minor(dev)))
    except PermissionError:
        pytest.skip("mknod needs root")
    with pytest.raises(FlashError, match="holding /"):
        flash(tmp_path / "none.img", node)
    check_target_safe(node, force=True)  # forced: allowed (nothing written here)


def test_unsafe_reasons() -> None:
    assert unsafe_reason("sdb", "sda", {}) is None
    assert "holding /" in (unsafe_reason("sda", "sda", {}) or "")
    assert "/media/usb" in (unsafe_reason("sdb", "sda", {"sdb": "/media/usb"}) or "")
    # The real mount table parses, and the root's disk is among the mounted ones.
    dev = os.stat("/").st_dev
    mounted = mounted_disks(Path("/proc/self/mountinfo").read_text())
    if os.major(dev):
        assert any(point == "/" for point in mounted.values())
