"""File-system images built from directory trees without root or loop devices.

- ext4 slots and the data partition: ``mke2fs -d`` (e2fsprogs 1.47) with a pinned mke2fs.conf,
  a fixed UUID and directory hash seed, ``E2FSPROGS_FAKE_TIME`` (1.47 ignores
  SOURCE_DATE_EPOCH), and a ``debugfs`` pass that sets every inode's atime and ctime to the build
  epoch and clamps mtimes to it (``-d`` copies them from the source tree, where they differ
  from build to build). The output file is removed first: writing over an existing file
  changes ~1350 bytes.
- vfat (ESP): ``mkfs.vfat --invariant`` with a fixed volume id, then ``mmd``/``mcopy`` (mtools,
  which honours SOURCE_DATE_EPOCH).

All three are byte-identical for identical inputs (docs/decisions.md §26).
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from image.errors import BuildError

log = logging.getLogger(__name__)
MIB = 1024 * 1024

# Debian 12's /etc/mke2fs.conf, pinned so a host with another default cannot change our bytes.
_MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tdefault = {
\t\tblocksize = 4096
\t}
"""


class ToolError(BuildError):
    """A host tool failed; the message carries its command line and stderr."""


class FilesystemTooSmall(BuildError):
    """The content does not fit into the requested file-system size."""


def run_tool(
    argv: list[str], env: dict[str, str] | None = None, input_text: str | None = None
) -> str:
    """Run a host tool; raise :class:`ToolError` with its stderr when it fails."""
    full_env = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(
            argv, check=True, capture_output=True, text=True, env=full_env, input=input_text
        )
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} not found; install it (see README: host tools)") from None
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip()[-2000:]
        raise ToolError(
            f"{' '.join(argv[:4])} ... failed (exit {exc.returncode}): {tail}"
        ) from None
    return done.stdout


def walk_tree(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` as (image path beginning with '/', lstat), sorted."""
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        base = "/" if rel == "." else "/" + rel
        yield base, os.lstat(dirpath)
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            yield os.path.join(base, name), os.lstat(path)
        # os.walk lists symlinks to directories among dirs and does not descend into them.
        for name in dirs:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                yield os.path.join(base, name), os.lstat(path)


def _debugfs_time_commands(root: Path, epoch: int) -> list[str]:
    """debugfs commands that pin atime/ctime to ``epoch`` and clamp mtime (``-d`` copies them)."""
    cmds: list[str] = []
    for path, st in walk_tree(root):
        if '"' in path or "\n" in path:
            raise BuildError(f"{root}{path}: file names with quotes or newlines are not supported")
        quoted = f'"{path}"'
        cmds.append(f"sif {quoted} atime @{epoch}")
        cmds.append(f"sif {quoted} ctime @{epoch}")
        if int(st.st_mtime) > epoch or (stat.S_ISLNK(st.st_mode) and int(st.st_mtime) != epoch):
            cmds.append(f"sif {quoted} mtime @{epoch}")
    return cmds


def make_ext4(
    tree: Path,
    out: Path,
    size_mib: int,
    fs_uuid: uuid.UUID,
    epoch: int,
    *,
    label: str = "",
    journal: bool = False,
    field: str = "partitions.rootfs_mib",
) -> Path:
    """Build an ext4 image of ``tree`` at ``out`` (``size_mib`` MiB); byte-reproducible.

    Slots use ``journal=False`` (mounted ``ro,noload``, docs/decisions.md §1); the data
    partition keeps its journal. ``field`` names the recipe setting to raise if it does not fit.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # mke2fs over an existing file is not reproducible
    features = "has_journal" if journal else "^has_journal"
    with tempfile.TemporaryDirectory(prefix="kiln-mke2fs-") as tmp:
        conf = Path(tmp) / "mke2fs.conf"
        conf.write_text(_MKE2FS_CONF)
        env = {"E2FSPROGS_FAKE_TIME": str(epoch), "MKE2FS_CONFIG": str(conf), "TZ": "UTC"}
        argv = [
            "mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096",
            "-O", features, "-d", str(tree), "-U", str(fs_uuid),
            "-E", f"root_owner=0:0,hash_seed={fs_uuid}", "-L", label,
            "-m", "0" if not journal else "5",
            str(out), f"{size_mib}M",
        ]  # fmt: skip
        try:
            run_tool(argv, env)
        except ToolError as exc:
            out.unlink(missing_ok=True)
            if "Could not allocate" in str(exc) or "No space left" in str(exc):
                raise FilesystemTooSmall(
                    f"{tree} does not fit into {size_mib} MiB of ext4; raise {field} in the recipe"
                ) from None
            raise
        cmd_file = Path(tmp) / "times.debugfs"
        cmd_file.write_text("\n".join(_debugfs_time_commands(tree, epoch)) + "\n")
        out_text = run_tool(["debugfs", "-w", "-f", str(cmd_file), str(out)], env)
        if "sif:" in out_text or "File not found" in out_text:
            raise ToolError(f"debugfs could not set times in {out}: {out_text[-1000:]}")
    return out


def make_vfat(
    tree: Path,
    out: Path,
    size_mib: int,
    volume_id: int,
    epoch: int,
    *,
    label: str = "ESP",
) -> Path:
    """Build a FAT32 image holding ``tree`` (copied with mtools, never mounted); reproducible."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    run_tool(
        [
            "mkfs.vfat", "-C", "-F", "32", "-s", "1", "-S", "512", "-n", label,
            "-i", f"{volume_id & 0xFFFFFFFF:08X}", "--invariant", str(out), str(size_mib * 1024),
        ],
        env,
    )  # fmt: skip
    image = f"{out}"
    for path, st in walk_tree(tree):
        if path == "/":
            continue
        if stat.S_ISDIR(st.st_mode):
            run_tool(["mmd", "-i", image, f"::{path}"], env)
        elif stat.S_ISREG(st.st_mode):
            run_tool(["mcopy", "-i", image, str(tree) + path, f"::{path}"], env)
        else:
            raise BuildError(f"{tree}{path}: only files and directories can go onto vfat")
    return out


def ext4_fits(tree: Path, size_mib: int) -> bool:
    """A quick estimate (content + 8% metadata) whether ``tree`` fits into ``size_mib``."""
    total = 0
    for _path, st in walk_tree(tree):
        total += (st.st_size + 4095) // 4096 * 4096 if stat.S_ISREG(st.st_mode) else 4096
    return total * 1.08 < size_mib * MIB


def fs_uuid_for(*parts: str) -> uuid.UUID:
    """A stable UUID derived from names (recipe, version, role)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "edgekiln:" + "/".join(parts))
