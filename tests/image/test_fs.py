"""ext4 and vfat images from small trees, checked with e2fsprogs, dosfstools and mtools."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from image.build.fs import FilesystemTooSmall, fs_uuid_for, make_ext4, make_vfat

pytestmark = pytest.mark.integration
EPOCH = 1_700_000_000
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tree(root: Path) -> Path:
    (root / "etc" / "systemd").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("kiln\n")
    (root / "etc" / "with space.conf").write_text("x = 1\n")
    (root / "usr" / "bin" / "tool").write_bytes(os.urandom(50_000))
    (root / "usr" / "bin" / "tool").chmod(0o755)
    os.link(root / "usr" / "bin" / "tool", root / "usr" / "bin" / "tool-link")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc" / "systemd" / "empty").mkdir()
    return root


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    ).stdout


def test_ext4_slot_is_valid_journalless_and_holds_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    img = make_ext4(tree, tmp_path / "slot.ext4", 16, fs_uuid_for("t", "slot"), EPOCH)
    subprocess.run(["fsck.ext4", "-fn", str(img)], check=True, capture_output=True)
    header = subprocess.run(
        ["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True
    ).stdout
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features"))
    assert "has_journal" not in features
    assert str(fs_uuid_for("t", "slot")) in header
    assert img.stat().st_size == 16 * 1024 * 1024
    assert debugfs(img, "cat /etc/hostname") == "kiln\n"
    assert "with space.conf" in debugfs(img, "ls -l /etc")
    assert "usr/bin" in debugfs(img, "stat /bin")
    stat_tool = debugfs(img, "stat /usr/bin/tool")
    assert "Links: 2" in stat_tool
    for field in ("ctime", "atime", "mtime"):
        line = next(x for x in stat_tool.splitlines() if x.strip().startswith(field))
        assert f"0x{EPOCH:08x}" in line, line


def test_ext4_is_byte_identical_across_builds_and_tree_times(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    first = sha(make_ext4(tree, tmp_path / "a.ext4", 16, fs_uuid_for("t"), EPOCH))
    # Change every time the -d copy reads (atime, ctime, future mtime) and build again in place.
    time.sleep(1.1)
    for path in tree.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (EPOCH + 99, EPOCH + 500))
            path.chmod(path.stat().st_mode)
    again = sha(make_ext4(tree, tmp_path / "a.ext4", 16, fs_uuid_for("t"), EPOCH))
    assert first == again


def test_ext4_data_partition_has_a_journal(tmp_path: Path) -> None:
    tree = tmp_path / "data"
    (tree / "etc").mkdir(parents=True)
    img = make_ext4(
        tree, tmp_path / "data.ext4", 32, fs_uuid_for("d"), EPOCH, label="data", journal=True
    )
    subprocess.run(["fsck.ext4", "-fn", str(img)], check=True, capture_output=True)
    header = subprocess.run(
        ["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True
    ).stdout
    assert "has_journal" in header
    assert "Filesystem volume name:   data" in header


def test_ext4_too_small_names_the_recipe_field(tmp_path: Path) -> None:
    tree = tmp_path / "big"
    tree.mkdir()
    (tree / "blob").write_bytes(os.urandom(6 * 1024 * 1024))
    with pytest.raises(FilesystemTooSmall, match=r"partitions\.rootfs_mib"):
        make_ext4(tree, tmp_path / "x.ext4", 4, fs_uuid_for("x"), EPOCH)
    assert not (tmp_path / "x.ext4").exists()


def test_vfat_is_valid_reproducible_and_readable(tmp_path: Path) -> None:
    tree = tmp_path / "esp"
    (tree / "EFI" / "BOOT").mkdir(parents=True)
    (tree / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(os.urandom(4096))
    (tree / "grub").mkdir()
    (tree / "grub" / "grub.cfg").write_text("set default=0\n")
    one = make_vfat(tree, tmp_path / "one.vfat", 40, 0x1234ABCD, EPOCH)
    time.sleep(1.1)
    two = make_vfat(tree, tmp_path / "two.vfat", 40, 0x1234ABCD, EPOCH)
    assert sha(one) == sha(two)
    subprocess.run(["fsck.vfat", "-n", str(one)], check=True, capture_output=True)
    listing = subprocess.run(
        ["mdir", "-i", str(one), "::/grub"],
        capture_output=True,
        text=True,
        env=MTOOLS_ENV,
        check=True,
    ).stdout
    assert "1234-ABCD" in listing
    cfg = subprocess.run(
        ["mtype", "-i", str(one), "::/grub/grub.cfg"],
        capture_output=True,
        text=True,
        env=MTOOLS_ENV,
        check=True,
    ).stdout
    assert cfg == "set default=0\n"
