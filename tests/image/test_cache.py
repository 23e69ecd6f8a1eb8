"""The build cache: pruning keeps the most recently used entries; deletion never crosses a mount."""

from __future__ import annotations

import os
import subprocess
import sys
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


# -- several processes sharing one cache ----------------------------------------------------------

FILL = """
import os, sys, time
from pathlib import Path
from image import cache

entry = Path(sys.argv[1])
with cache.filling(entry) as hit:
    if not hit:
        tmp = cache.scratch(entry)
        (tmp / "payload").write_text(f"made by {os.getpid()}\\n")
        time.sleep(1.0)  # the other process asks meanwhile
        (tmp / "complete").write_text("ok\\n")
        tmp.rename(entry)
    print("hit" if hit else "built", (entry / "payload").read_text().strip())
"""

LEASE = """
import sys
from pathlib import Path
from image import cache

with cache.leases():
    with cache.filling(Path(sys.argv[1])) as hit:
        assert hit
    print("leased", flush=True)
    sys.stdin.read()  # until the test closes it
"""


def _python(script: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        [sys.executable, "-c", script, *args], text=True, stdout=subprocess.PIPE, **kw
    )


def test_two_processes_filling_one_entry_build_it_once(tmp_path: Path) -> None:
    entry = tmp_path / "slot" / ("d" * 32)
    procs = [_python(FILL, str(entry)) for _ in range(2)]
    lines = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    made = (entry / "payload").read_text().strip()
    assert lines == [f"built {made}", f"hit {made}"], lines  # one built, one waited and hit
    assert list(entry.parent.iterdir()) == [entry]  # no scratch folder, no lock file at rest


def test_prune_spares_the_entries_another_process_is_using(tmp_path: Path) -> None:
    kind = tmp_path / "slot"
    used = _entry(kind, "e" * 32, age=300)
    (used / "complete").write_text("ok\n")
    other = _entry(kind, "f" * 32, age=400)
    holder = _python(LEASE, str(used), stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leased"
        assert cache.prune(kind, keep=0) == [other]  # the used one is the newest-used, too
        assert used.exists()
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert cache.prune(kind, keep=0) == [used]  # released: pruned like any other
    assert not any(kind.iterdir()), "lock files of pruned entries stay behind"
