"""The build cache: pruning keeps the most recently used entries; deletion never crosses a mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from image import cache


def _entry(kind: Path, name: str, age: float) -> Path:
    e = kind / name
    e.mkdir(parents=True)
    (e / "payload").write_bytes(b"x" * 10)
    t = 1_700_000_000 - age
    os.utime(e, (t, t))
    return e


def test_prune_keeps_most_recently_used_and_leaves_other_names(tmp_path: Path) -> None:
    kind = tmp_path / "slot"
    old = _entry(kind, "a" * 32, age=300)
    mid = _entry(kind, "b" * 32, age=200)
    new = _entry(kind, "c" * 32, age=100)
    foreign = _entry(kind, "root-arm64-0123456789abcdef", age=999)
    scratch = _entry(kind, ".cafe-tmp", age=999)
    cache.touch(old)  # used just now: kept
    removed = cache.prune(kind, keep=2)
    assert removed == [mid]
    assert old.exists() and new.exists() and not mid.exists()
    assert foreign.exists() and scratch.exists()


def test_prune_of_missing_folder_is_nothing(tmp_path: Path) -> None:
    assert cache.prune(tmp_path / "none", keep=1) == []


def test_mounts_under_parses_escaped_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "30 22 0:5 / /cache/base/x/root/proc rw - proc proc rw\n"
        "31 22 0:6 / /cache/base/x/root/dev/shm rw - tmpfs tmpfs rw\n"
        "32 22 0:7 / /cache/base/x\\040y rw - tmpfs tmpfs rw\n"
        "33 22 0:8 / /cache/base/xz rw - tmpfs tmpfs rw\n"
    )
    found = cache.mounts_under(Path("/cache/base/x"), info)
    assert found == [Path("/cache/base/x/root/dev/shm"), Path("/cache/base/x/root/proc")]
    assert cache.mounts_under(Path("/cache/base/x y"), info) == [Path("/cache/base/x y")]


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_remove_tree_unmounts_a_bind_mount_and_spares_the_host(tmp_path: Path) -> None:
    host = tmp_path / "host-shm"
    host.mkdir()
    precious = host / "precious"
    precious.write_text("keep me")
    tree = tmp_path / "base" / "root"
    (tree / "dev" / "shm").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host), str(tree / "dev" / "shm")], check=True)
    try:
        assert cache.mounts_under(tree) == [tree / "dev" / "shm"]
        cache.remove_tree(tmp_path / "base")
    finally:
        subprocess.run(["umount", "--lazy", str(tree / "dev" / "shm")], check=False)
    assert not (tmp_path / "base").exists()
    assert precious.read_text() == "keep me"


def test_remove_tree_refuses_when_a_mount_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    info = tmp_path / "mountinfo"
    info.write_text(f"30 22 0:5 / {tree}/proc rw - proc proc rw\n")
    real = cache.mounts_under
    monkeypatch.setattr(cache, "mounts_under", lambda t: real(t, info))
    with pytest.raises(cache.MountedTreeError, match="still mounted"):
        cache.remove_tree(tree)
    assert tree.exists()
