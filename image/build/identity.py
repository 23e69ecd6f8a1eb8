"""What names and dates a build: cache folder, epoch, stage keys, image name, UUID seeds.

Shared by the x86 and U-Boot pipeline (:mod:`image.build.pipeline`) and the L4T one
(:mod:`image.build.l4t`), which must not import each other.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

from image.build import fs, rootfs
from image.recipe import LoadedRecipe, canonical_json

DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z, as image.freeze.runtime
IMAGE_FORMAT = 1
STAGES = (
    "base", "runtime", "slot", "boot", "data", "disk", "bmap", "compress", "manifest", "bundle",
)  # fmt: skip


def default_cache_dir() -> Path:
    """``$EDGEKILN_CACHE`` or ``$XDG_CACHE_HOME/edgekiln`` (``~/.cache/edgekiln``)."""
    if os.environ.get("EDGEKILN_CACHE"):
        return Path(os.environ["EDGEKILN_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edgekiln"


def build_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` if set, else a fixed date: every timestamp in the image."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value else DEFAULT_EPOCH


def key(*parts: Any) -> str:
    """A stage's cache key: the first 128 bits of the sha256 of its canonical inputs."""
    return hashlib.sha256(canonical_json(list(parts))).hexdigest()[:32]


def code_digest(*modules: str, overlay: bool = False) -> str:
    """Digest of the builder modules (and the overlay files) whose code decides a stage's bytes."""
    here = Path(__file__).parent
    parts = [rootfs.file_digest(here / name) for name in modules]
    return key(*parts, rootfs.overlay_digest() if overlay else "")


def image_name(loaded: LoadedRecipe) -> str:
    r = loaded.recipe
    return f"{r.product}-{r.target.name}-{r.version}"


def uuid_seed(loaded: LoadedRecipe) -> str:
    """UUIDs (disk, partitions, file systems) derive from product, target and version."""
    r = loaded.recipe
    return f"{r.product}/{r.target.name}/{r.version}"


def slot_fs_uuid(loaded: LoadedRecipe) -> uuid.UUID:
    """The slot file system's UUID: the same for every version of a product and target.

    It (and the htree hash seed, and with ``metadata_csum`` every metadata checksum) sits in
    the slot image, so a per-version UUID changed thousands of scattered blocks and cost a
    delta ~0.7 MB. Both slots carrying one UUID is harmless: the same image is flashed into
    both anyway, and slots are found by partition number and PARTUUID, never by file-system
    UUID (docs/decisions.md §2).
    """
    r = loaded.recipe
    return fs.fs_uuid_for(r.product, r.target.name, "rootfs")
