"""Loader environments that must not block installs and commits, against the real tools.

* A GRUB environment holding a variable GRUB cannot store (``grub-editenv`` writes ``ek-evil``;
  GRUB's ``save_env`` and our writer only ``[A-Za-z0-9_]``): the variable is dropped, every
  transition still writes (was: every install and commit refused forever).
* A U-Boot environment that was never saved (or whose copies are both garbled): U-Boot runs on
  its built-in default environment, so the first save starts from it (``u-boot-initial-env``
  beside fw_env.config, libubootenv's default file), as ``fw_setenv`` does; without that file
  the write is refused rather than saving edgekiln's variables alone (``bootcmd`` lost).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.slots.errors import LoaderError
from appliance.slots.grub import grub_loader
from appliance.slots.state import BootState
from appliance.slots.uboot import uboot_loader

SIZE = 0x2000
DEFAULT_ENV = "bootcmd=run distro_bootcmd\nbootdelay=2\nfdtfile=board.dtb\n"
needs_tools = pytest.mark.skipif(
    shutil.which("grub-editenv") is None or shutil.which("fw_printenv") is None,
    reason="needs grub-editenv (grub-common) and fw_printenv/fw_setenv (libubootenv-tool)",
)


def tool(*args: str) -> str:
    return subprocess.run(args, capture_output=True, check=True, text=True).stdout


@needs_tools
@pytest.mark.integration
def test_a_grub_variable_grub_cannot_store_is_dropped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    grub = tmp_path / "esp" / "grub"
    grub.mkdir(parents=True)
    for name in ("grubenv", "grubenv.bak"):
        tool("grub-editenv", str(grub / name), "create")
        tool("grub-editenv", str(grub / name), "set", "ek_committed=A", "ek-evil=1", "keep_me=x")
    assert "ek-evil=1" in tool("grub-editenv", str(grub / "grubenv"), "list")
    loader = grub_loader(tmp_path / "esp")
    with caplog.at_level(logging.WARNING):
        loader.deactivate("B")
    assert "dropped variables the loader cannot store: 'ek-evil'" in caplog.text
    loader.begin_try("B")
    loader.commit("B")
    for name in ("grubenv", "grubenv.bak"):
        listed = tool("grub-editenv", str(grub / name), "list").splitlines()
        assert sorted(listed) == [
            "ek_bad=",
            "ek_committed=B",
            "ek_tries_left=0",
            "ek_try=",
            "keep_me=x",
        ]
    assert loader.read() == BootState("B")


def uboot_env(root: Path, seed: str | None) -> Path:
    """Two never-saved copies (erased flash reads 0xff) and, optionally, the default env file."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("env0", "env1"):
        (root / name).write_bytes(b"\xff" * SIZE)
    config = root / "fw_env.config"
    config.write_text(f"{root / 'env0'} 0x0 {SIZE:#x}\n{root / 'env1'} 0x0 {SIZE:#x}\n")
    if seed is not None:
        (root / "u-boot-initial-env").write_text(seed)
    return config


def printed(config: Path) -> dict[str, str]:
    # No -f: the environment must stand on its own (a saved copy), not on a default file.
    lines = tool("fw_printenv", "-c", str(config)).splitlines()
    return dict(line.split("=", 1) for line in lines)


@needs_tools
@pytest.mark.integration
def test_a_never_saved_uboot_env_is_seeded_from_the_default_env(tmp_path: Path) -> None:
    config = uboot_env(tmp_path / "ours", DEFAULT_ENV)
    loader = uboot_loader(config)
    assert loader.read() == BootState()
    loader.deactivate("B")
    ours = printed(config)
    assert ours["bootcmd"] == "run distro_bootcmd" and ours["fdtfile"] == "board.dtb"
    assert ours["ek_committed"] == "A" and ours["ek_bad"] == "B"
    # fw_setenv on the same never-saved environment starts from the same default file.
    theirs_config = uboot_env(tmp_path / "theirs", DEFAULT_ENV)
    seed = str(theirs_config.parent / "u-boot-initial-env")
    tool("fw_setenv", "-c", str(theirs_config), "-f", seed, "ek_committed", "A")
    theirs = printed(theirs_config)
    assert {k: v for k, v in ours.items() if not k.startswith("ek_")} == {
        k: v for k, v in theirs.items() if not k.startswith("ek_")
    }


@needs_tools
@pytest.mark.integration
def test_a_never_saved_uboot_env_without_a_default_env_is_not_written(tmp_path: Path) -> None:
    config = uboot_env(tmp_path, None)
    before = [(tmp_path / n).read_bytes() for n in ("env0", "env1")]
    with pytest.raises(LoaderError, match="u-boot-initial-env") as refused:
        uboot_loader(config).deactivate("B")
    assert "would drop U-Boot's own (bootcmd, ...)" in str(refused.value)
    assert [(tmp_path / n).read_bytes() for n in ("env0", "env1")] == before
