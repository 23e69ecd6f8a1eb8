"""The Jetson back end against a fake ``nvbootctrl`` on PATH (NVIDIA's tool is not here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from appliance.slots.errors import InvalidTransition, LoaderError
from appliance.slots.nvbootctrl import NvBootCtrlLoader
from appliance.slots.state import BootState

FAKE = """#!{python}
import os, sys
log = os.environ["FAKE_NV_LOG"]
with open(log, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[-1] == "dump-slots-info":
    sys.stdout.write(open(os.environ["FAKE_NV_DUMP"]).read())
elif sys.argv[-2:] == ["set-active-boot-slot", "9"]:
    sys.stderr.write("invalid slot\\n")
    sys.exit(1)
"""

DUMP = """Current version: 35.3.1
Capsule update status: 0
Current bootloader slot: A
Active bootloader slot: A
Current rootfs slot: {current}
Active rootfs slot: {active}
num_slots: 2
slot: 0,             retry_count: 3,             status: {s0}
slot: 1,             retry_count: 3,             status: {s1}
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "bin" / "nvbootctrl"
    exe.parent.mkdir()
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NV_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("FAKE_NV_DUMP", str(tmp_path / "dump"))
    return tmp_path


def dump(tmp: Path, current: str, active: str, s0: str = "normal", s1: str = "normal") -> None:
    (tmp / "dump").write_text(DUMP.format(current=current, active=active, s0=s0, s1=s1))


def calls(tmp: Path) -> list[str]:
    return (tmp / "log").read_text().splitlines()


def test_update_cycle_command_lines(fake: Path) -> None:
    loader = NvBootCtrlLoader()
    dump(fake, "A", "A")
    assert loader.read() == BootState("A")
    loader.deactivate("B")
    loader.begin_try("B")
    dump(fake, "A", "B")
    assert loader.read() == BootState("A", "B", 1)
    dump(fake, "B", "B")
    loader.commit("B")
    assert [c for c in calls(fake) if "dump" not in c] == [
        "-t rootfs set-slot-as-unbootable 1",
        "-t rootfs set-active-boot-slot 1",
        "-t rootfs mark-boot-successful",
    ]


def test_bad_slot_and_committed_protection(fake: Path) -> None:
    loader = NvBootCtrlLoader()
    dump(fake, "A", "A", s1="unbootable")
    assert loader.read() == BootState("A", None, 0, frozenset({"B"}))
    with pytest.raises(InvalidTransition):
        loader.deactivate("A")
    dump(fake, "A", "B")
    loader.mark_bad("B")
    assert calls(fake)[-2:] == [
        "-t rootfs set-slot-as-unbootable 1",
        "-t rootfs set-active-boot-slot 0",
    ]


def test_errors_carry_stderr(fake: Path) -> None:
    with pytest.raises(LoaderError, match="invalid slot"):
        NvBootCtrlLoader()._run("set-active-boot-slot", "9")
    with pytest.raises(LoaderError, match="only on a Jetson"):
        NvBootCtrlLoader("nvbootctrl-missing").read()
