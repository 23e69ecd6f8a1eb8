"""``kiln vm IMAGE``: boot a built image in QEMU and follow its serial console."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from image.vm.qemu import Vm, VmConfig, VmError, image_arch


def _parse_forward(value: str) -> tuple[int, int]:
    try:
        guest, host = (int(part) for part in value.split(":"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r}: expected GUEST_PORT:HOST_PORT, e.g. 8443:18443"
        ) from exc
    return guest, host


@click.command("vm")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--forward", "forwards", multiple=True, help="GUEST_PORT:HOST_PORT (repeatable).")
@click.option(
    "--drive",
    "drives",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Extra read-only raw drive, e.g. a USB-stick image holding a bundle.",
)
@click.option(
    "--overlay/--no-overlay",
    default=True,
    show_default=True,
    help="Boot through a qcow2 overlay so IMAGE stays untouched.",
)
@click.option("--memory", default=1024, show_default=True, help="Guest memory in MiB.")
@click.option("--accel", type=click.Choice(["tcg", "kvm"]), default="tcg", show_default=True)
@click.option(
    "--arch",
    type=click.Choice(["auto", "amd64", "arm64"]),
    default="auto",
    show_default=True,
    help="Guest architecture (auto: from the image's slot partition type).",
)
@click.option(
    "--bios",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="arm64: the U-Boot binary (default: Debian's u-boot-qemu qemu_arm64 build).",
)
def vm(
    image: Path,
    forwards: tuple[str, ...],
    drives: tuple[Path, ...],
    overlay: bool,
    memory: int,
    accel: str,
    arch: str,
    bios: Path | None,
) -> None:
    """Boot IMAGE in QEMU and print its serial console: amd64 with UEFI (OVMF), arm64 with
    U-Boot (-M virt); virtio disk and network, i6300esb watchdog.

    Ctrl-C powers the VM off (a power cut, as far as the guest can tell).
    """
    config = VmConfig(
        disk=image,
        memory_mb=memory,
        accel=accel,
        overlay=overlay,
        forwards=dict(_parse_forward(f) for f in forwards),
        extra_drives=list(drives),
        arch=image_arch(image) if arch == "auto" else arch,
        bios=bios,
    )
    with Vm(config) as machine:
        machine.start()
        shown = 0
        try:
            while machine.running:
                text = machine.console(whole=True)
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)
                time.sleep(0.2)
        except KeyboardInterrupt:
            click.echo("\npower cut", err=True)
            return
        raise VmError("QEMU exited; see the console output above")
