"""Install a verified bundle into the inactive slot; the loader then tries it once.

Order (each step durable before the next; ARCHITECTURE "Update flow"):

1. refuse unless the booted slot is committed (else the inactive slot is the only good one);
2. ``open_bundle``: signature, manifest and policy verified before any payload byte is read;
3. the loader marks the target slot not bootable;
4. payload chunks are verified and written through a :class:`~appliance.bundle.Sink`, which is
   flushed (fsync) at the end; ``finish()`` checks nothing unlisted follows. A ``delta``
   payload is rebuilt from the running slot, which is first checked against the signed base;
5. the slot is read back from the medium (past the page cache) and compared with the verified
   chunks; this overlaps the write, region by region: by default the slot is written with
   O_DIRECT and each region made durable, then re-read (:mod:`appliance.ota.direct`); a
   ``sink_factory`` sink, or a file system without O_DIRECT, gets the page-cache read-back
   (:mod:`appliance.ota.readback`); if the writes were not sequential, the whole slot is
   re-read and hashed against the manifest;
6. the install is recorded on data (the security floor rises only at commit), a keyring
   rotation in the bundle is applied;
7. the loader is told to try the slot once.

A power cut anywhere leaves the committed slot as the loader's choice until step 7 completed,
and step 7 only follows a verified, durable slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

from appliance.bundle import FileSink, Policy, Rotation, Sink, apply_keyring_update, open_bundle
from appliance.ota.direct import REGION, DirectMedium, DirectReadBackSink, DirectUnsupported, Medium
from appliance.ota.errors import NoImageError, ReadBackError, TargetError
from appliance.ota.readback import ReadBackSink, read_back_sha256
from appliance.slots.errors import InvalidTransition
from appliance.slots.loader import Loader
from appliance.slots.state import Slot, other

log = logging.getLogger(__name__)
DEFAULT_TARGETS: Mapping[Slot, Path] = {
    "A": Path("/dev/disk/by-partlabel/rootfs_a"),
    "B": Path("/dev/disk/by-partlabel/rootfs_b"),
}
Trace = Callable[[str], None]


class CheckingSink(Sink, Protocol):
    """A sink that re-reads what it wrote from the medium (both read-back sinks)."""

    def checked(self, size: int) -> bool:
        """True if ``size`` bytes were re-read and equal; raises ReadBackError if not equal."""

    def digest(self) -> str | None:
        """sha256 of the re-read bytes, if asked for."""


@dataclasses.dataclass(frozen=True)
class InstallResult:
    """What was installed where."""

    slot: Slot
    version: str
    security_version: int
    image_sha256: str
    image_size: int


def _target_capacity(path: Path) -> int | None:
    """Bytes a block device holds; None for a regular file (it grows)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise TargetError(f"slot target {path} is not there: {exc.strerror}") from exc
    import stat

    if not stat.S_ISBLK(st.st_mode):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _open_sink(
    path: Path,
    sink_factory: Callable[[Path], Sink] | None,
    medium_factory: Callable[[Path], Medium],
    region: int,
    hash_readback: bool,
) -> CheckingSink:
    """O_DIRECT writes with overlapped re-reads where possible, else the page-cache read-back."""
    if sink_factory is None:
        try:
            medium = medium_factory(path)
        except DirectUnsupported as exc:
            log.info("%s; writing through the page cache", exc)
            sink_factory = FileSink
        else:
            return DirectReadBackSink(
                medium, region=region, hash_readback=hash_readback, label=f"slot {path}"
            )
    return ReadBackSink(sink_factory(path), path, hash_readback=hash_readback)


def _read_back(sink: CheckingSink, path: Path, target: Slot, size: int, sha256: str) -> str:
    """The slot's digest as read back; ReadBackError unless it is the signed image's."""
    try:
        # Normally re-read window by window during the write (each range equal to its verified
        # chunks); if the writes did not allow that, one sha256 pass over the slot now.
        covered = sink.checked(size)
        digest = (sink.digest() or sha256) if covered else read_back_sha256(path, size)
    except ReadBackError as exc:
        raise ReadBackError(
            f"slot {target}: {exc}: the medium may be failing; the slot stays marked bad"
        ) from None
    if digest != sha256:
        raise ReadBackError(
            f"slot {target} ({path}) reads back as sha256 {digest}, the signed image is "
            f"{sha256}: the medium may be failing; the slot stays marked bad"
        )
    return digest


def install(
    stream: BinaryIO,
    *,
    policy: Policy,
    loader: Loader,
    booted: Slot,
    source: str = "bundle",
    targets: Mapping[Slot, Path] = DEFAULT_TARGETS,
    data_dir: Path | None = None,
    sink_factory: Callable[[Path], Sink] | None = None,
    medium_factory: Callable[[Path], Medium] = DirectMedium,
    region: int = REGION,
    progress: Callable[[int, int], None] | None = None,
    trace: Trace = lambda point: None,
    hash_readback: bool = False,
) -> InstallResult:
    """Stream a bundle into the slot that is not ``booted`` and ask the loader to try it once.

    The slot is re-read from the medium and compared with the verified chunks; with
    ``hash_readback`` the re-read bytes are also hashed against the signed image digest.
    The slot is written through ``medium_factory(path)`` (O_DIRECT; the power-cut test puts a
    simulated volatile cache there) in re-read units of ``region`` bytes; a ``sink_factory``
    sink, or a target without O_DIRECT, is written through the page-cache read-back instead.
    """
    target = other(booted)
    state = loader.read()
    if state.committed != booted:
        raise InvalidTransition(
            f"the running slot {booted} is not committed yet (slot {state.committed} is): let "
            "its health check commit it (or `appliance slots mark-good`) before installing"
        )
    path = Path(targets[target])
    capacity = _target_capacity(path)
    bundle = open_bundle(stream, policy, source)
    manifest = bundle.manifest
    trace("verified-manifest")
    images = [p for p in manifest.payloads if p.kind in ("full", "delta")]
    if not images:
        raise NoImageError(f"{source}: no slot image payload (full or delta); nothing to install")
    image = images[0].image
    if capacity is not None and image.size > capacity:
        raise TargetError(
            f"{source}: image needs {image.size} bytes, slot {target} ({path}) holds {capacity}"
        )
    with contextlib.ExitStack() as stack:
        base = None
        if images[0].kind == "delta" and images[0].base is not None:
            from appliance.bundle.delta import BaseSlot

            # A delta rebuilds the image from the running slot: check it is the signed base
            # before the target is even marked bad (a refused bundle changes nothing).
            base = stack.enter_context(BaseSlot(targets[booted]))
            base.check(images[0].base.size, images[0].base.sha256)
        loader.deactivate(target)
        trace("deactivated")
        keyring_bytes: bytes | None = None
        sink = _open_sink(path, sink_factory, medium_factory, region, hash_readback)
        stack.callback(sink.close)
        for payload in manifest.payloads:
            if payload.kind in ("full", "delta"):
                # Verified chunks only; flushed (fsync) at the end.
                bundle.stream_payload(payload.name, sink, progress=progress, base=base)
            elif payload.kind == "keyring":
                keyring_bytes = bundle.read_keyring()
        trace("written")
        bundle.finish()
    trace("finished")
    digest = _read_back(sink, path, target, image.size, image.sha256)
    trace("read-back")
    if data_dir is not None:
        from appliance.state import SlotRecord, record_installed

        record_installed(
            data_dir,
            SlotRecord(target, manifest.version, manifest.security_version, manifest.key_id),
        )
        if keyring_bytes is not None:
            rotation = Rotation(keyring_bytes, bundle.manifest_bytes, bundle.signature)
            apply_keyring_update(policy.keyring, keyring_bytes, data_dir, rotation)
    trace("recorded")
    loader.begin_try(target)
    trace("tried")
    log.warning("installed %s into slot %s; reboot to try it", manifest.version, target)
    return InstallResult(target, manifest.version, manifest.security_version, digest, image.size)
