"""``kiln flash --provision``: write one device's identity into the flashed disk's data partition.

The provisioning source is checked on the host (appliance/telemetry/provision.py: identity,
broker, certificate against key and CA, nothing expired), then its files are written into the
``data`` partition's ext4 in place with ``debugfs -w 'DISK?offset=N'`` (no mount, no loop
device), owned by root with their modes (certificates and key 0600), and read back: debugfs
exits 0 even when one of its commands fails, so every file's bytes and mode are checked after.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import tempfile
from pathlib import Path

from appliance.telemetry.provision import Provision, ProvisionError, plan
from image.build.disk import read_table
from image.flash import FlashError

DATA_PARTITION = "data"


class ProvisionWriteError(FlashError):
    """The provisioning files could not be written to (or read back from) the data partition."""


def check_source(source: Path) -> Provision:
    """The checked provisioning (refused before anything is flashed); host time is trusted."""
    try:
        return plan(source, now=datetime.datetime.now(datetime.UTC))
    except ProvisionError as exc:
        raise FlashError(f"--provision: {exc}") from None


def _debugfs(args: list[str], what: str) -> str:
    done = subprocess.run(["debugfs", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProvisionWriteError(f"debugfs ({what}) failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def data_offset(target: Path) -> int:
    """Byte offset of the ``data`` partition on the flashed disk (from its GPT)."""
    for part in read_table(target):
        if part.name == DATA_PARTITION:
            return part.start
    raise ProvisionWriteError(f"{target}: no partition named {DATA_PARTITION!r} in its GPT")


def write_provision(target: Path, prov: Provision) -> list[str]:
    """Write ``prov``'s files into ``target``'s data partition; return their paths there."""
    fs = f"{target}?offset={data_offset(target)}"
    with tempfile.TemporaryDirectory(prefix="kiln-provision-") as tmp:
        lines: list[str] = []
        made: set[str] = set()
        for i, item in enumerate(prov.files):
            parent, _, name = f"/{item.rel}".rpartition("/")
            parts = [p for p in parent.split("/") if p]
            for depth in range(1, len(parts) + 1):
                directory = "/" + "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    lines.append(f"mkdir {directory}")  # an existing one: an error, ignored
            local = Path(tmp) / f"f{i}"
            local.write_bytes(item.data)
            # write never replaces a file: remove a default one first
            lines += [f"cd {parent or '/'}", f"rm {name}", f"write {local} {name}",
                      f"sif {name} mode 0{0o100000 | item.mode:o}", f"sif {name} uid 0",
                      f"sif {name} gid 0", "cd /"]  # fmt: skip
        script = Path(tmp) / "provision.debugfs"
        script.write_text("\n".join(lines) + "\n")
        _debugfs(["-w", "-f", str(script), fs], "write")
    for item in prov.files:
        _verify(fs, item.rel, item.data, item.mode)
    return [f"/{item.rel}" for item in prov.files]


def _verify(fs: str, rel: str, data: bytes, mode: int) -> None:
    done = subprocess.run(["debugfs", "-R", f"cat /{rel}", fs], capture_output=True, check=False)
    if done.returncode != 0 or done.stdout != data:
        raise ProvisionWriteError(f"/{rel} on the data partition does not read back as written")
    stat = _debugfs(["-R", f"stat /{rel}", fs], "stat")
    found = re.search(r"Mode:\s+(\d+)", stat)
    if found is None or int(found.group(1), 8) & 0o7777 != mode:
        raise ProvisionWriteError(
            f"/{rel} on the data partition has mode {found.group(1) if found else '?'}, "
            f"not {mode:04o}"
        )
