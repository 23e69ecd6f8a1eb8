"""The base a delta is made from: a slot image, a whole GPT disk image, or a full bundle.

Build host only (``kiln bundle --delta-from OLD``). A disk image's ``rootfs_a`` partition is
cut out by reading the GPT (the builder writes the same image into both slots); a full bundle
is verified with the given keyring and its slot image rebuilt into a temporary file.
"""

from __future__ import annotations

import struct
import tempfile
from contextlib import ExitStack
from pathlib import Path

from appliance.bundle.errors import BundleError
from appliance.bundle.keyring import Keyring

SECTOR = 512
SLOT_LABEL = "rootfs_a"


class DeltaBaseInputError(BundleError):
    """The ``--delta-from`` input is neither a slot image, a GPT disk image nor a full bundle."""


def _gpt_partition(path: Path, label: str) -> tuple[int, int] | None:
    """(byte offset, byte length) of the GPT partition named ``label``; None if no GPT."""
    with open(path, "rb") as f:
        f.seek(SECTOR)
        head = f.read(92)
        if head[:8] != b"EFI PART":
            return None
        entries_lba, count, entry_size = struct.unpack_from("<QII", head, 72)
        f.seek(entries_lba * SECTOR)
        table = f.read(count * entry_size)
    for i in range(count):
        entry = table[i * entry_size : (i + 1) * entry_size]
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        if name == label and last >= first:
            return first * SECTOR, (last - first + 1) * SECTOR
    raise DeltaBaseInputError(f"{path}: a GPT disk image without a {label!r} partition")


def _copy_range(src: Path, dst: Path, offset: int, length: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fin.seek(offset)
        remaining = length
        while remaining:
            block = fin.read(min(1 << 20, remaining))
            if not block:
                raise DeltaBaseInputError(f"{src}: ends inside the {SLOT_LABEL} partition")
            fout.write(block)
            remaining -= len(block)


def _image_from_bundle(path: Path, keyring: Keyring, dst: Path) -> None:
    from appliance.bundle.reader import Policy, open_bundle
    from appliance.bundle.sink import FileSink

    with open(path, "rb") as f:
        bundle = open_bundle(f, Policy(keyring, None, None), str(path))
        full = [p for p in bundle.manifest.payloads if p.kind == "full"]
        if not full:
            raise DeltaBaseInputError(f"{path}: no full slot image payload to diff against")
        with FileSink(dst, create=True, truncate=True) as sink:
            bundle.stream_payload(full[0].name, sink)
        bundle.finish()
    with open(dst, "r+b") as f:
        f.truncate(full[0].image.size)


def ext4_size(path: Path, offset: int = 0) -> int | None:
    """Bytes of the ext4 file system starting at ``offset`` (from its superblock), else None.

    A slot partition is larger than the image written into it; only the file system's own
    bytes are the same on every device, so they are the base a delta names.
    """
    with open(path, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    if len(sb) < 0x158 or sb[56:58] != b"\x53\xef":
        return None
    (lo,) = struct.unpack_from("<I", sb, 4)
    (log_block,) = struct.unpack_from("<I", sb, 24)
    (incompat,) = struct.unpack_from("<I", sb, 0x60)
    hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & 0x80 else 0  # INCOMPAT_64BIT
    return int(((hi << 32) | lo) * (1024 << log_block))


def resolve_base(path: Path, keyring: Keyring, stack: ExitStack) -> Path:
    """The slot image file for ``--delta-from path`` (slot image, GPT disk image or bundle).

    Temporary files live until ``stack`` closes.
    """
    with open(path, "rb") as f:
        magic = f.read(263)
    if magic[257:262] == b"ustar":  # a bundle (FORMAT.md: a canonical ustar archive)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-delta-")))
        _image_from_bundle(path, keyring, tmp / "base.img")
        return tmp / "base.img"
    part = _gpt_partition(path, SLOT_LABEL)
    offset, length = part if part is not None else (0, path.stat().st_size)
    fs_size = ext4_size(path, offset)
    if fs_size is not None and fs_size > length:
        raise DeltaBaseInputError(f"{path}: its ext4 file system is larger than its slot")
    if part is None and fs_size in (None, length):
        return path
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-delta-")))
    _copy_range(path, tmp / "base.img", offset, fs_size or length)
    return tmp / "base.img"


__all__ = ["DeltaBaseInputError", "ext4_size", "resolve_base"]
