"""Install a verified bundle into the inactive slot; the loader then tries it once.

Order (each step durable before the next; docs/decisions.md §20):

1. refuse unless the booted slot is committed (else the inactive slot is the only good one);
2. ``open_bundle``: signature, manifest and policy verified before any payload byte is read
   (the policy's floor and running version: docs/decisions.md §19); then, still before the
   target is touched, a seekable source's length is checked against the length the manifest
   implies, and a keyring rotation (which the writer puts before the slot image) is read,
   verified and validated against the current keyring;
3. the loader marks the target slot not bootable;
4. payload chunks are verified and written through a :class:`~appliance.bundle.Sink`, which is
   flushed (fsync) at the end; ``finish()`` checks nothing unlisted follows. A ``delta``
   payload is rebuilt from the running slot, whose whole sha256 must be the signed base's:
   checked before step 3 on one CPU, beside this step on more (each chunk written meanwhile
   matched its own signed digest; the stream ends only once the base check passed,
   docs/decisions.md §34);
5. the slot is read back from the medium (past the page cache) and compared with the verified
   chunks; this overlaps the write, region by region: by default the slot is written with
   O_DIRECT and each region made durable, then re-read (:mod:`appliance.ota.direct`); a
   ``sink_factory`` sink, or a file system without O_DIRECT, gets the page-cache read-back
   (:mod:`appliance.ota.readback`); if the writes were not sequential, the whole slot is
   re-read and hashed against the manifest;
6. the install is recorded on data (the security floor rises only at commit), the keyring
   rotation validated in step 2 is stored;
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

from appliance.bootdisk import SLOT_DEVICES
from appliance.bundle import FileSink, Policy, Rotation, Sink, apply_keyring_update, open_bundle
from appliance.bundle.errors import KeyringError
from appliance.bundle.keychain import verify_rotation
from appliance.bundle.keyring import Keyring
from appliance.bundle.manifest import KIND_KEYRING, Manifest, is_older
from appliance.bundle.tarstream import BLOCK, END_OF_ARCHIVE, padding
from appliance.bundle.verified import VerifiedBundle
from appliance.ota.direct import REGION, DirectMedium, DirectReadBackSink, DirectUnsupported, Medium
from appliance.ota.errors import NoImageError, ReadBackError, SourceLengthError, TargetError
from appliance.ota.readback import ReadBackSink, read_back_sha256
from appliance.slots.errors import InvalidTransition
from appliance.slots.loader import Loader
from appliance.slots.state import Slot, other

log = logging.getLogger(__name__)
#: the slots on the boot disk only (appliance/bootdisk.py), never a stick's same-named partition
DEFAULT_TARGETS: Mapping[Slot, Path] = SLOT_DEVICES
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
    notes: tuple[str, ...] = ()  # what the technician should know: unchecked expiry, downgrade


def _notes(manifest: Manifest, policy: Policy) -> tuple[str, ...]:
    notes = []
    if manifest.expires is not None and policy.trusted_now is None:
        notes.append(
            f"expiry not checked: the bundle expires at {manifest.expires} (Unix time) but this "
            "device has no trusted clock (not synced since boot)"
        )
    if (
        manifest.allow_downgrade
        and policy.running_version is not None
        and is_older(manifest.version, policy.running_version)
    ):
        notes.append(
            f"downgrade: {manifest.version} replaces the running {policy.running_version} "
            "(the signed manifest allows it)"
        )
    return tuple(notes)


def _stream_length(stream: BinaryIO) -> int | None:
    """Bytes from the current position to the end, for a seekable source; else None."""
    try:
        if not stream.seekable():
            return None
        here = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end - here


def bundle_length(bundle: VerifiedBundle) -> int:
    """The exact byte length of the container the signed manifest describes (FORMAT.md)."""
    members = [len(bundle.manifest_bytes), len(bundle.signature)]
    members += [p.size for p in bundle.manifest.payloads]
    return sum(BLOCK + size + padding(size) for size in members) + len(END_OF_ARCHIVE)


def _check_length(bundle: VerifiedBundle, length: int | None, source: str) -> None:
    if length is None:
        return
    expected = bundle_length(bundle)
    if length != expected:
        raise SourceLengthError(
            f"{source} has {length} bytes but its signed manifest describes {expected}: the "
            f"file is {'truncated' if length < expected else 'padded'}; copy it again (nothing "
            "was written)"
        )


def _read_rotation(bundle: VerifiedBundle, current: Keyring, source: str) -> bytes | None:
    """The bundle's keyring rotation, verified and validated before the target is touched."""
    kinds = [p.kind for p in bundle.manifest.payloads]
    if KIND_KEYRING not in kinds:
        return None
    if any(k != KIND_KEYRING for k in kinds[: kinds.index(KIND_KEYRING)]):
        raise KeyringError(
            f"{source}: the keyring rotation comes after the slot image, so it cannot be "
            "validated before the slot is written; rebuild the bundle with a current "
            "`kiln bundle` (it puts the keyring first)"
        )
    data = bundle.read_keyring()  # each chunk checked against its signed digest
    # The very check apply_keyring_update makes after the read-back (signed by a key of the
    # current keyring, newer, no key un-revoked, one usable key left), made before the write.
    rotation = Rotation(data, bundle.manifest_bytes, bundle.signature)
    verify_rotation(current, rotation, f"{source} keyring payload")
    return data


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


def _usable_cores() -> int:
    """CPUs this process may run on (taskset, cgroup cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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
    length = _stream_length(stream)
    bundle = open_bundle(stream, policy, source)
    manifest = bundle.manifest
    _check_length(bundle, length, source)
    keyring_bytes = _read_rotation(bundle, policy.keyring, source)
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

            # A delta rebuilds the image from the running slot, which must be the signed base.
            # One core: checked before the target is even marked bad (a refused bundle changes
            # nothing). More: checked on a helper thread while chunks, each verified against
            # its signed digest, are rebuilt and written; the slot is tried only after it
            # passed, and a wrong base leaves the target as any refused stream does: marked bad,
            # a verified prefix at most (docs/decisions.md §34).
            base = stack.enter_context(BaseSlot(targets[booted]))
            if _usable_cores() > 1:
                base.start_check(images[0].base.size, images[0].base.sha256)
            else:
                base.check(images[0].base.size, images[0].base.sha256)
        loader.deactivate(target)
        trace("deactivated")
        sink = _open_sink(path, sink_factory, medium_factory, region, hash_readback)
        stack.callback(sink.close)
        # Verified chunks only; flushed (fsync) at the end.
        bundle.stream_payload(images[0].name, sink, progress=progress, base=base)
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
    return InstallResult(
        target,
        manifest.version,
        manifest.security_version,
        digest,
        image.size,
        _notes(manifest, policy),
    )
