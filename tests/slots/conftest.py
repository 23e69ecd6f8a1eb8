"""A real GPT test disk (FAT ESP + two ext4 slots) booted by the real grub.cfg in grub-emu.

grub-emu (Debian package ``grub-emu``) runs GRUB's own script engine, ``load_env``,
``save_env`` (written into the FAT inside the disk image), ``regexp``, ``part_gpt``, ``fat``
and ``ext2``. It has no ``linux`` loader, so the harness config defines ``linux`` and
``initrd`` as functions that print what they were given and check the file exists; reaching
``initrd`` with an existing file is where the real machine would ``boot``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.slots import grub

ESP_LABEL = "EKTEST"
SECTOR = 512
ESP_START, ESP_SIZE = 2048, 20480
SLOT_START = {"A": 22528, "B": 38912}
SLOT_SIZE = 16384
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}

HARNESS_CFG = """\
function linux {
  echo "EK-LINUX"
  for ek_arg in $*; do
    echo "EK-ARG[$ek_arg]"
  done
  test -f "$1"
}
function initrd {
  echo "EK-INITRD[$1]"
  if test -f "$1"; then
    echo "EK-BOOT"
    halt
  fi
  false
}
source "%s"
echo "EK-END"
halt
"""

needs_grub_emu = pytest.mark.skipif(
    shutil.which("grub-emu") is None or shutil.which("mcopy") is None,
    reason="needs grub-emu (apt: grub-emu) and mtools",
)


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=True, capture_output=True, env=MTOOLS_ENV, **kwargs)  # type: ignore[call-overload,no-any-return]


@dataclasses.dataclass
class Boot:
    """What GRUB did: the slot whose kernel it would boot, and its whole output."""

    slot: str | None
    cmdline: str
    output: str


class GrubDisk:
    """A disk image, its device map and harness config for grub-emu."""

    def __init__(self, root: Path, kernels: dict[str, bool], cfg: str) -> None:
        self.root = root
        self.image = root / "disk.img"
        self.esp = f"{self.image}@@{ESP_START * SECTOR}"
        root.mkdir(parents=True, exist_ok=True)
        self._build(kernels, cfg)

    def _build(self, kernels: dict[str, bool], cfg: str) -> None:
        with self.image.open("wb") as f:
            f.truncate(40 * 1024 * 1024)
        table = "label: gpt\nunit: sectors\nfirst-lba: 2048\n"
        esp_type, linux_type = ESP_TYPE, LINUX_TYPE
        table += f"start={ESP_START}, size={ESP_SIZE}, type={esp_type}, name=boot\n"
        for slot in "AB":
            table += f"start={SLOT_START[slot]}, size={SLOT_SIZE}, type={linux_type}, "
            table += f"name=rootfs_{slot.lower()}\n"
        _run(["sfdisk", "-q", str(self.image)], input=table.encode())
        esp = self.root / "esp.img"
        _run(
            [
                "mkfs.vfat",
                "-C",
                "-F",
                "16",
                "-n",
                ESP_LABEL,
                str(esp),
                str(ESP_SIZE * SECTOR // 1024),
            ]
        )
        _run(["mmd", "-i", str(esp), "::/grub"])
        (self.root / "grub.cfg").write_text(cfg)
        _run(["mcopy", "-i", str(esp), str(self.root / "grub.cfg"), "::/grub/grub.cfg"])
        self._place(esp, ESP_START)
        for slot in "AB":
            if not kernels.get(slot, True):
                continue
            tree = self.root / f"tree{slot}"
            (tree / "boot").mkdir(parents=True)
            (tree / "boot" / "vmlinuz").write_text(f"kernel of slot {slot}\n")
            (tree / "boot" / "initrd.img").write_text("initrd\n")
            fs = self.root / f"slot{slot}.img"
            _run(
                [
                    "mke2fs",
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-O",
                    "^has_journal",
                    "-d",
                    str(tree),
                    str(fs),
                    "8M",
                ]
            )
            self._place(fs, SLOT_START[slot])
        harness = self.root / "harness"
        harness.mkdir()
        embed = self.root / "embed.cfg"
        embed.write_text(grub.render_embed_cfg(ESP_LABEL))
        (harness / "grub.cfg").write_text(HARNESS_CFG % f"(host){embed}")
        (self.root / "device.map").write_text(f"(hd0) {self.image}\n")

    def _place(self, fs: Path, start: int) -> None:
        _run(
            [
                "dd",
                f"if={fs}",
                f"of={self.image}",
                "bs=512",
                f"seek={start}",
                "conv=notrunc",
                "status=none",
            ]
        )

    def write_env(self, primary: bytes | None, backup: bytes | None) -> None:
        for name, data in (("grubenv", primary), ("grubenv.bak", backup)):
            if data is None:
                subprocess.run(
                    ["mdel", "-i", self.esp, f"::/grub/{name}"],
                    check=False,
                    capture_output=True,
                    env=MTOOLS_ENV,
                )
            else:
                local = self.root / name
                local.write_bytes(data)
                _run(["mcopy", "-o", "-i", self.esp, str(local), f"::/grub/{name}"])

    def read_env(self, name: str = "grubenv") -> bytes | None:
        out = subprocess.run(
            ["mtype", "-i", self.esp, f"::/grub/{name}"],
            check=False,
            capture_output=True,
            env=MTOOLS_ENV,
        )
        return out.stdout if out.returncode == 0 else None

    def boot(self, timeout: float = 30) -> Boot:
        proc = subprocess.run(
            ["grub-emu", "-m", str(self.root / "device.map"), "-d", str(self.root / "harness")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        text = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", proc.stdout + proc.stderr).decode(
            "utf-8", "replace"
        )
        text = re.sub(r"\s*\[ \S+\s+[\d.]+\S*B\s+100%[^\]]*\]", "", text)  # file-load progress
        text = text.replace("\r", "")
        slot = None
        cmdline = ""
        if "EK-BOOT" in text:
            # One argument per line: the 80-column console wraps (and eats) long lines.
            last = text.rsplit("EK-LINUX", 1)[1]
            cmdline = " ".join(re.findall(r"EK-ARG\[(.*?)\]", last))
            match = re.search(r"edgekiln\.slot=([AB])", cmdline)
            slot = match.group(1) if match else None
        return Boot(slot, cmdline, text)


@pytest.fixture(scope="session")
def make_grub_disk(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., GrubDisk]:
    """Build a test disk: ``make_grub_disk(kernels={"B": False}, **render_grub_cfg kwargs)``."""

    def make(kernels: dict[str, bool] | None = None, **cfg_kwargs: object) -> GrubDisk:
        cfg = grub.render_grub_cfg(**cfg_kwargs)  # type: ignore[arg-type]
        return GrubDisk(tmp_path_factory.mktemp("grubdisk"), kernels or {}, cfg)

    return make


@pytest.fixture(scope="session")
def grub_disk(make_grub_disk: Callable[..., GrubDisk]) -> GrubDisk:
    """The standard disk: both slots hold a kernel and an initrd."""
    return make_grub_disk(cmdline="console=ttyS0,115200 quiet")
