"""Power-cut test of the OTA installer: SIGKILL at random points, then boot from the loader state.

Each run builds on a simulated device (slot images as files, the GRUB back end's two grubenv
copies on a fake ESP, a data directory):

1. a forked child runs the real installer (``appliance.ota.installer.install``) with a bundle
   for v2 and SIGKILLs itself at a random point: a byte offset of the slot write, or a state
   transition (after the manifest check, after the slot is marked bad, inside each loader
   write, after the write, the read-back, the record, the try);
2. the slot writes went through a model of a volatile write cache (docs/decisions.md §13):
   bytes not yet fsynced are lost, or written back partly and torn, at random. Half the runs
   put it under the installer's O_DIRECT path (:class:`VolatileMedium`: regions made durable
   and re-read while later ones are written), half under the page-cache path
   (:class:`VolatileCacheSink`);
3. the next boot is taken from the loader state, as grub.cfg does it (``loader_choice``, whose
   equivalence with the real grub.cfg is tested in tests/slots/test_grub_cfg.py); the booted
   slot's sha256 must be the image digest of a signed manifest (v1 or v2);
4. the agent reconciles, and a rerun of the installer must succeed and make the next boot try
   v2.

With ``--loader uboot`` the loader state is a redundant U-Boot environment (two copies, written
in place) and the ``env-N`` cuts tear the copy being written at a random byte.

Usage: ``python tools/powercut.py [--runs N] [--seed S] [--loader grub|uboot]``; ends with
``N cuts, K unbootable``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.bundle import Keyring, PayloadSource, Policy, TrustedKey, write_bundle
from appliance.fsutil import atomic_write_bytes
from appliance.ota.installer import install
from appliance.slots import control
from appliance.slots.grub import initial_env
from appliance.slots.grubenv import GrubEnvStore, render
from appliance.slots.loader import EkCodec, EnvLoader
from appliance.slots.state import BootState, Slot, loader_choice
from appliance.slots.ubootenv import EnvCopy, UBootEnvStore

PRODUCT, TARGET = "powercut", "generic-x86-64"
IMAGE_SIZE = 256 * 1024
CHUNK = 16 * 1024
REGION = 48 * 1024  # O_DIRECT path: re-read units, so that several overlap the writes
UBOOT_ENV_SIZE = 0x4000
STATE_POINTS = (
    "verified-manifest",
    "env-1",  # between the two grubenv copies of "mark target bad"
    "deactivated",
    "written",
    "finished",
    "read-back",
    "recorded",
    "env-2",  # between the two grubenv copies of "try target once"
    "tried",
)
_REC = struct.Struct("<QI")
SHM = Path("/dev/shm")  # noqa: S108 - a private TemporaryDirectory is made inside it


class VolatileCacheSink:
    """A sink whose writes sit in a simulated cache (a side log) until ``flush``.

    ``flush`` applies the log to the slot and fsyncs it. If the process dies first, the harness
    decides what of the log the "kernel" had written back: nothing, some records, torn ones.
    """

    def __init__(self, path: Path, log: Path, cut_at: int | None = None) -> None:
        self.path = Path(path)
        self.log = Path(log)
        self.cut_at = cut_at
        self._fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, offset: int, data: bytes) -> None:
        if self.cut_at is not None and offset <= self.cut_at < offset + len(data):
            part = data[: self.cut_at - offset]
            os.write(self._fd, _REC.pack(offset, len(part)) + part)
            os.kill(os.getpid(), signal.SIGKILL)
        os.write(self._fd, _REC.pack(offset, len(data)) + data)

    def flush(self) -> None:
        apply_log(self.path, self.log, keep=lambda _: 1.0)
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)


class VolatileMedium:
    """The O_DIRECT path's medium with a simulated volatile cache: writes sit in a side log.

    ``sync`` (the read-back thread's fdatasync) applies the log to the slot; ``read`` reads the
    slot file, so a region re-read before it was made durable would not match. Thread-safe:
    the writer appends while the read-back thread syncs.
    """

    def __init__(self, path: Path, log: Path, cut_at: int | None = None) -> None:
        self.path = Path(path)
        self.log = Path(log)
        self.cut_at = cut_at
        self._lock = threading.Lock()
        self._fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._read_fd = os.open(self.path, os.O_RDONLY)

    def write(self, offset: int, data: memoryview) -> None:
        self.write_tail(offset, bytes(data))

    def write_tail(self, offset: int, data: bytes) -> None:
        with self._lock:
            if self.cut_at is not None and offset <= self.cut_at < offset + len(data):
                part = data[: self.cut_at - offset]
                os.write(self._fd, _REC.pack(offset, len(part)) + part)
                os.kill(os.getpid(), signal.SIGKILL)
            os.write(self._fd, _REC.pack(offset, len(data)) + data)

    def sync(self) -> None:
        with self._lock:
            apply_log(self.path, self.log, keep=lambda _: 1.0)
            os.ftruncate(self._fd, 0)

    def read(self, offset: int, out: memoryview) -> int:
        return os.preadv(self._read_fd, [out], offset)

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._read_fd)


def read_log(log: Path) -> list[tuple[int, bytes]]:
    data = log.read_bytes() if log.exists() else b""
    records, pos = [], 0
    while pos + _REC.size <= len(data):
        offset, size = _REC.unpack_from(data, pos)
        pos += _REC.size
        records.append((offset, data[pos : pos + size]))
        pos += size
    return records


def apply_log(path: Path, log: Path, keep: object) -> None:
    """Write logged records into ``path`` and fsync; ``keep(i)`` is the fraction of record i."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for i, (offset, data) in enumerate(read_log(log)):
            fraction = keep(i)  # type: ignore[operator]
            if fraction > 0:
                os.pwrite(fd, data[: int(len(data) * fraction)], offset)
        os.fsync(fd)
    finally:
        os.close(fd)


class CutStore(GrubEnvStore):
    """The real two-copy grubenv store, with a cut point between its copies."""

    def __init__(self, primary: Path, on_between: object) -> None:
        super().__init__(primary)
        self.on_between = on_between
        self.writes = 0

    def write(self, variables: Mapping[str, str]) -> None:
        block = render(variables)
        self.writes += 1
        atomic_write_bytes(self.backup, block)
        self.on_between(f"env-{self.writes}")  # type: ignore[operator]
        atomic_write_bytes(self.primary, block)


class TornUBootStore(UBootEnvStore):
    """The real two-copy U-Boot store; at the cut, its in-place write is torn, then SIGKILL."""

    def __init__(self, copies: list[EnvCopy], cut: str | int | None, tear: int) -> None:
        super().__init__(copies)
        self.cut = cut
        self.tear = tear
        self.writes = 0

    def write(self, variables: Mapping[str, str]) -> None:
        self.writes += 1
        copy, block = self.plan(variables)
        if self.cut == f"env-{self.writes}":
            self.put(copy, block[: self.tear])  # the power went mid-write
            os.kill(os.getpid(), signal.SIGKILL)
        self.put(copy, block)


def _image(seed: int) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(IMAGE_SIZE)


@dataclass
class Device:
    """A simulated device and the signed bundles it may see."""

    root: Path
    loader_kind: str = "grub"  # or "uboot"
    direct: bool = True  # the installer's O_DIRECT path, else its page-cache path
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    signed: dict[str, str] = field(default_factory=dict)  # image sha256 -> version

    def __post_init__(self) -> None:
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.keyring = Keyring(version=1, keys=(TrustedKey.from_public_key(raw, "release"),))
        self.v1 = _image(1)
        self.v2 = _image(2)
        self.bundle_v1 = self._bundle(self.v1, "1.0.0")
        self.bundle_v2 = self._bundle(self.v2, "2.0.0")

    def _bundle(self, image: bytes, version: str) -> bytes:
        out = io.BytesIO()
        manifest = write_bundle(
            out,
            key=self.key,
            product=PRODUCT,
            targets=[TARGET],
            version=version,
            security_version=1,
            created=1_750_000_000,
            payloads=[PayloadSource("rootfs.img", "full", image, "none")],
            chunk_size=CHUNK,
        )
        self.signed[manifest.payloads[0].image.sha256] = version
        return out.getvalue()

    @property
    def slots(self) -> dict[Slot, Path]:
        return {"A": self.root / "rootfs_a.img", "B": self.root / "rootfs_b.img"}

    def reset(self) -> None:
        """Factory state: v1 committed in A, junk in B, fresh env and data."""
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "esp" / "grub").mkdir(parents=True)
        (self.root / "data").mkdir()
        self.slots["A"].write_bytes(self.v1)
        self.slots["B"].write_bytes(_image(99))
        for name in ("grubenv", "grubenv.bak"):
            (self.root / "esp" / "grub" / name).write_bytes(initial_env())
        for copy in self.uboot_copies:
            copy.device.write_bytes(bytes(UBOOT_ENV_SIZE))
        initial = self.root / "u-boot-initial-env"  # the board's default environment
        initial.write_text("bootcmd=run distro_bootcmd\n")
        for _ in self.uboot_copies:  # both copies valid: A committed, U-Boot's own variables
            UBootEnvStore(self.uboot_copies, initial).write(
                {**EkCodec().encode(BootState()), "bootcmd": "run distro_bootcmd"}
            )

    @property
    def uboot_copies(self) -> list[EnvCopy]:
        return [EnvCopy(self.root / f"uboot-env{i}", 0, UBOOT_ENV_SIZE) for i in (0, 1)]

    def loader(
        self, on_between: object = lambda point: None, cut: str | int | None = None, tear: int = 0
    ) -> EnvLoader:
        if self.loader_kind == "uboot":
            return EnvLoader("uboot", TornUBootStore(self.uboot_copies, cut, tear), EkCodec())
        store = CutStore(self.root / "esp" / "grub" / "grubenv", on_between)
        return EnvLoader("grub", store, EkCodec())

    def policy(self) -> Policy:
        return Policy(self.keyring, PRODUCT, TARGET, 0, None)

    def install(self, booted: Slot, cut: str | int | None = None, tear: int = 0) -> None:
        """Run the installer; with ``cut`` it SIGKILLs itself there (call in a child).

        ``env-N`` cuts the N-th loader write: between the two grubenv copies, or inside the
        U-Boot copy being written (``tear`` bytes of it reach the medium).
        """

        def trace(point: str) -> None:
            if point == cut:
                os.kill(os.getpid(), signal.SIGKILL)

        log = self.root / "cache.log"
        cut_at = cut if isinstance(cut, int) else None
        install(
            io.BytesIO(self.bundle_v2),
            policy=self.policy(),
            loader=self.loader(trace, cut, tear),
            booted=booted,
            targets=self.slots,
            data_dir=self.root / "data",
            sink_factory=None if self.direct else lambda p: VolatileCacheSink(p, log, cut_at),
            medium_factory=lambda p: VolatileMedium(p, log, cut_at),
            region=REGION,
            trace=trace,
        )

    def power_cut(self, target: Slot, rng: random.Random) -> str:
        """What of the unsynced cache reached the medium: nothing, some records, or torn ones."""
        log = self.root / "cache.log"
        records = read_log(log)
        mode = rng.choice(["drop", "some", "torn"])
        if records and mode == "some":
            apply_log(self.slots[target], log, lambda _: float(rng.random() < 0.5))
        elif records and mode == "torn":
            apply_log(self.slots[target], log, lambda _: rng.random())
        log.unlink(missing_ok=True)
        return mode

    def boot(self) -> tuple[Slot, str | None]:
        """grub.cfg's choice (saving the counted-down try) and the booted image's signed version."""
        loader = self.loader()
        state = loader.read()
        slot, saved = loader_choice(state)
        if saved != state:
            loader.write(saved)
        digest = hashlib.sha256(self.slots[slot].read_bytes()[:IMAGE_SIZE]).hexdigest()
        return slot, self.signed.get(digest)


def one_run(
    device: Device, rng: random.Random, cut: str | int | None = None
) -> tuple[str, bool, bool]:
    """(cut point, booted a signed image, rerun installed v2 cleanly); ``cut`` random if None.

    A random cut also picks the installer's path at random (``device.direct``).
    """
    device.reset()
    if cut is None:
        cut = rng.randrange(IMAGE_SIZE) if rng.random() < 0.5 else rng.choice(STATE_POINTS)
        device.direct = rng.random() < 0.5
    tear = rng.randrange(UBOOT_ENV_SIZE)
    pid = os.fork()
    if pid == 0:  # the installer process
        try:
            device.install("A", cut, tear)
        finally:
            os._exit(3)  # reaching here means the cut point was never hit
    _, status = os.waitpid(pid, 0)
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        raise RuntimeError(f"installer was not cut at {cut!r} (status {status})")
    # The kill lost the process; the power cut loses (parts of) the unsynced slot writes.
    device.power_cut("B", rng)
    slot, version = device.boot()
    bootable = version is not None
    # The agent after boot: reconcile; a slot on trial passes its gate in this simulation.
    loader = device.loader()
    state = control.reconcile(loader, slot, device.root / "data")
    if state.committed != slot:
        control.commit_booted(loader, slot, device.root / "data")
    try:
        device.install(slot)
        next_slot, next_version = device.boot()
        rerun_ok = next_slot != slot and next_version == "2.0.0"
    except Exception as exc:  # reported as a failed rerun
        print(f"rerun after cut {cut!r} failed: {exc}", file=sys.stderr)
        rerun_ok = False
    return str(cut), bootable, rerun_ok


def run(
    runs: int, seed: int, workdir: Path | None = None, loader: str = "grub"
) -> tuple[int, int, int]:
    """(cuts, unbootable, failed reruns).

    The device lives on tmpfs when there is one: durability is modelled explicitly by the cache
    sink, and real fsyncs would only make the runs slow.
    """
    rng = random.Random(seed)
    if workdir is None and SHM.is_dir():
        workdir = SHM
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        device = Device(Path(tmp) / "device", loader)
        unbootable = failed = 0
        for i in range(runs):
            cut, bootable, rerun_ok = one_run(device, rng)
            if not bootable:
                unbootable += 1
                print(f"run {i}: cut at {cut}: booted an unsigned image", file=sys.stderr)
            if not rerun_ok:
                failed += 1
                print(f"run {i}: cut at {cut}: rerun did not install", file=sys.stderr)
    return runs, unbootable, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loader", choices=["grub", "uboot"], default="grub")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    cuts, unbootable, failed = run(args.runs, args.seed, loader=args.loader)
    print(f"{failed} failed reruns, {time.monotonic() - started:.1f} s")
    print(f"{cuts} cuts, {unbootable} unbootable")
    return 0 if unbootable == 0 and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
