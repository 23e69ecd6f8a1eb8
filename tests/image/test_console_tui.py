"""The image starts the technician TUI on tty1 and (after Enter) on the serial console.

The getty drop-ins the overlay renders are run with the host's real agetty on a pseudo-terminal;
the login program they name is replaced by a script that records its arguments and environment,
so what is checked is exactly what agetty would exec on the device.
"""

from __future__ import annotations

import os
import pty
import select
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from image.build import rootfs
from tests.image.test_rootfs_boot import config

pytestmark = pytest.mark.integration

AGETTY = Path("/sbin/agetty")
PROGRAM = "/opt/edgekiln/appliance/appliance"
DROPINS = {
    "tty1": "etc/systemd/system/getty@tty1.service.d/edgekiln-tui.conf",
    "ttyS0": "etc/systemd/system/serial-getty@ttyS0.service.d/edgekiln-tui.conf",
}


def _rendered(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    (base / "boot").mkdir(parents=True)
    (base / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel")
    (base / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    return rootfs.assemble_root(base, tmp_path / "root", runtime=None, models={}, config=config())


def _service(dropin: str) -> tuple[dict[str, str], list[str]]:
    """The Environment= pairs and the last ExecStart= argv of a drop-in."""
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in dropin.splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
        elif line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart=").lstrip("-"))
    return env, argv


def _read(fd: int, seconds: float) -> bytes:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_dropins_render_with_the_slot_loader(tmp_path: Path) -> None:
    root = _rendered(tmp_path)
    for rel in DROPINS.values():
        env, argv = _service((root / rel).read_text())
        assert env == {
            "EDGEKILN_DEVICE_CONFIG": "/etc/edgekiln/device.json",
            "EDGEKILN_SLOTS": "grub:/boot/efi",
        }
        assert argv[argv.index("--login-program") + 1] == PROGRAM
        assert argv[argv.index("--login-options") + 1] == "tui"


@pytest.mark.skipif(not AGETTY.exists() or os.geteuid() != 0, reason="needs root and agetty")
@pytest.mark.parametrize("console", ["tty1", "ttyS0"])
def test_agetty_execs_the_tui_with_the_device_environment(tmp_path: Path, console: str) -> None:
    env, argv = _service((_rendered(tmp_path) / DROPINS[console]).read_text())
    record = tmp_path / "exec.txt"
    fake = tmp_path / "appliance"
    fake.write_text(f'#!/bin/sh\n{{ echo "$@"; env; }} > {record}\n')
    fake.chmod(0o755)
    master, slave = pty.openpty()
    tty = os.ttyname(slave).removeprefix("/dev/")
    # %I is the tty; the device's program path is swapped for the recorder.
    argv = [tty if a == "%I" else str(fake) if a == PROGRAM else a for a in argv]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        waits = "--wait-cr" in argv
        early = _read(master, 1.5)
        if waits:
            # The serial line stays quiet until someone presses Enter.
            assert not record.exists() and early == b""
            os.write(master, b"\r")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            record.exists() and "EDGEKILN_SLOTS=" in record.read_text()
        ):
            _read(master, 0.2)
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)
    lines = record.read_text().splitlines()
    assert lines[0] == "tui"
    assert "EDGEKILN_SLOTS=grub:/boot/efi" in lines
    assert "EDGEKILN_DEVICE_CONFIG=/etc/edgekiln/device.json" in lines
    assert f"TERM={'linux' if console == 'tty1' else 'xterm-256color'}" in lines
