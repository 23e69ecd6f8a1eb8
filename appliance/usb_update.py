"""``appliance usb-update DEVICE``: install the bundle on a technician's USB stick, then reboot.

The image's udev rule starts ``edgekiln-usb-update@<dev>.service`` for a file system labelled
``EK-UPDATE``; the unit runs ``/usr/lib/edgekiln/usb-update``, which runs this. A stick is a
stranger's medium, so, in order:

1. it is mounted with ``-t vfat,exfat,ext4 -o ro,nodev,nosuid,noexec``: no other file system
   driver of the kernel ever parses it, and nothing on it is executable or a device;
2. the first ``*.bundle`` at its top that is a regular file is taken; symbolic links, FIFOs,
   devices and directories are skipped (and named in the log), never followed or opened;
3. that file is opened once (:mod:`appliance.localbundle`); its sha256 is taken through that open
   file, and a bundle installed from USB before (its sha256 in ``<data>/edgekiln/usb-installed``)
   is skipped, so a stick left in does not install again after the reboot or a rollback;
4. the same open file is installed (signature, target and security floor checked before any
   byte is written); the bytes the installer read are hashed as it reads them, and that sha256
   is what is remembered (power-cut-safe write);
5. the stick is unmounted and the device reboots to try the new slot once.

Lines go to stdout prefixed ``edgekiln-usb-update:`` (the journal; the QEMU tests read them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import click

from appliance import cli_options
from appliance.errors import ApplianceError

MOUNT_DIR = Path("/run/edgekiln/usb")
#: the only file systems a stick may carry (comma list for ``mount -t``)
FILESYSTEMS = "vfat,exfat,ext4"
MOUNT_OPTIONS = "ro,nodev,nosuid,noexec"
SEEN_NAME = "usb-installed"


class UsbUpdateError(ApplianceError):
    """The stick could not be mounted, or its bundle not installed."""


def say(text: str) -> None:
    """One line to the journal."""
    click.echo(f"edgekiln-usb-update: {text}")


def mount_command(device: str, where: Path) -> list[str]:
    """The ``mount`` call for a stick: read-only, three file systems, nothing executable."""
    return ["mount", "-t", FILESYSTEMS, "-o", MOUNT_OPTIONS, device, str(where)]


@contextlib.contextmanager
def mounted(device: str, where: Path) -> Iterator[Path]:
    """Mount ``device`` read-only on ``where`` for the duration of the block."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(mount_command(device, where), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UsbUpdateError(
            f"cannot mount {device} read-only on {where}: {proc.stderr.strip() or proc.returncode}"
            f"; a stick must carry {FILESYSTEMS.replace(',', ', ')}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True, check=False)


def pick_bundle(top: Path) -> tuple[Path | None, list[str]]:
    """(the first regular ``*.bundle`` at ``top`` by name, the entries skipped and why)."""
    skipped: list[str] = []
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        if not entry.name.endswith(".bundle"):
            continue
        if entry.is_symlink():
            skipped.append(f"{entry.name} (a symbolic link)")
        elif not entry.is_file(follow_symlinks=False):
            skipped.append(f"{entry.name} (not a regular file)")
        else:
            return Path(entry.path), skipped
    return None, skipped


def seen_sums(data_dir: Path) -> set[str]:
    """sha256 of bundles installed from USB before."""
    try:
        text = (data_dir / "edgekiln" / SEEN_NAME).read_text()
    except FileNotFoundError:
        return set()
    return {line.strip() for line in text.splitlines() if line.strip()}


def remember(data_dir: Path, *sums: str) -> None:
    """Add ``sums`` to the installed-from-USB record (temp file, fsync, rename, fsync dir)."""
    from appliance.fsutil import atomic_write_bytes

    path = data_dir / "edgekiln" / SEEN_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = ""
    lines = [line for line in old.splitlines() if line.strip()]
    for s in sums:
        if s not in lines:
            lines.append(s)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def update_from(
    top: Path,
    label: str,
    *,
    data_dir: Path,
    install_into: Mapping[str, Path] | None,
    loader_spec: str | None,
    booted: str | None,
    keyring_path: Path,
) -> bool:
    """Install the bundle at the top of the mounted stick ``top``; True if one was installed."""
    from appliance.device import Device
    from appliance.localbundle import HashingStream, open_regular, sha256_of
    from appliance.ota.installer import install

    path, skipped = pick_bundle(top)
    for name in skipped:
        say(f"skipped {name} on {label}")
    if path is None:
        say(f"no *.bundle on {label}")
        return False
    with open_regular(path) as stream:
        before = sha256_of(stream)
        if before in seen_sums(data_dir):
            say(f"{path.name} was already installed from USB: skipped")
            return False
        say(f"installing {path.name} from {label}")
        device = Device.from_env(data_dir)
        device = dataclasses.replace(
            device,
            loader_spec=loader_spec or device.loader_spec,
            booted_override=booted or device.booted_override,
            keyring_path=keyring_path,
            slot_targets={**device.slot_targets, **(install_into or {})},
        )
        hashing = HashingStream(b"", stream)
        result = install(
            hashing,  # type: ignore[arg-type]
            policy=device.policy(),
            loader=device.loader(),
            booted=device.booted(),
            source=path.name,
            targets=device.slot_targets,  # type: ignore[arg-type]
            data_dir=data_dir,
        )
    installed = hashing.hexdigest()
    if installed != before:  # the stick changed its bytes between the two reads
        say(f"{path.name} changed while it was read; the verified bytes were installed")
    remember(data_dir, installed, before)
    say(f"installed {path.name} ({result.version}) into slot {result.slot}, read back and verified")
    return True


@click.command("usb-update")
@click.argument("device")
@cli_options.loader_option()
@cli_options.booted_option()
@cli_options.data_dir_option("Data partition mount (default: device.json).")
@cli_options.keyring_option()
@click.option(
    "--mount-dir", type=click.Path(file_okay=False, path_type=Path), default=MOUNT_DIR,
    show_default=True, help="Where the stick is mounted read-only.",
)  # fmt: skip
@click.option("--slot", "slots", multiple=True, help="Slot device or image: A=PATH / B=PATH.")
@click.option("--reboot/--no-reboot", default=True, help="Reboot after an install (default).")
def usb_update(
    device: str,
    loader_spec: str | None,
    booted: str | None,
    data_dir: Path | None,
    keyring_path: Path,
    mount_dir: Path,
    slots: tuple[str, ...],
    reboot: bool,
) -> None:
    """Install the signed bundle on the USB stick DEVICE (udev starts this), then reboot."""
    from appliance.device import Device

    targets: dict[str, Path] = {}
    for value in slots:
        slot, sep, path = value.partition("=")
        if not sep or slot not in ("A", "B") or not path:
            raise click.BadParameter(f"{value!r}: use A=PATH or B=PATH", param_hint="--slot")
        targets[slot] = Path(path)
    data = data_dir or Device.from_env().data_dir
    with mounted(device, mount_dir) as top:
        done = update_from(
            top, device, data_dir=data, install_into=targets or None, loader_spec=loader_spec,
            booted=booted, keyring_path=keyring_path,
        )  # fmt: skip
    if done and reboot:
        say("rebooting to try it")  # --no-block: queue the reboot, do not wait for it
        proc = subprocess.run(
            ["systemctl", "reboot", "--no-block"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise UsbUpdateError(f"systemctl reboot failed: {proc.stderr.strip()}; reboot by hand")
