"""The Jetson back end against a stand-in ``nvbootctrl`` on PATH (NVIDIA's tool is not here).

The stand-in (fake_nvbootctrl.py) keeps L4T's rootfs slot variables in a file and prints what
L4T documents; ``boot()`` plays UEFI (active slot, retry count, fallback after 3 failed boots).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.slots.booted import booted_slot
from appliance.slots.config import open_loader
from appliance.slots.errors import InvalidTransition, LoaderError
from appliance.slots.nvbootctrl import NvBootCtrlLoader
from appliance.slots.state import BootState

from .fake_nvbootctrl import boot, install, load


@pytest.fixture
def l4t(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Jetson's slot variables (``l4t.json``) behind an ``nvbootctrl`` on PATH."""
    install(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NVBOOTCTRL_STATE", str(tmp_path / "l4t.json"))
    monkeypatch.setenv("FAKE_NVBOOTCTRL_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("EDGEKILN_SLOTS", f"nvbootctrl:{tmp_path / 'data' / 'slots-l4t.env'}")
    boot(tmp_path / "l4t.json")  # factory: slot A
    return tmp_path


def calls(tmp: Path) -> list[str]:
    lines = (tmp / "log").read_text().splitlines()
    return [c for c in lines if "dump-slots-info" not in c and "get-current-slot" not in c]


def loader(tmp: Path) -> NvBootCtrlLoader:
    found = open_loader()  # $EDGEKILN_SLOTS, as the device's units set it
    assert isinstance(found, NvBootCtrlLoader)
    assert found.record.path == tmp / "data" / "slots-l4t.env"
    return found


def test_update_cycle_commits_only_after_the_gate(l4t: Path) -> None:
    nv = loader(l4t)
    assert nv.read() == BootState("A")
    nv.deactivate("B")
    assert nv.read() == BootState("A", None, 0, frozenset({"B"}))
    nv.begin_try("B")
    assert nv.read() == BootState("A", "B", 1)
    assert boot(l4t / "l4t.json") == 1
    assert booted_slot() == "B"  # no edgekiln.slot= here: L4T's get-current-slot
    # L4T says B is current and active; only our record knows it is on trial.
    assert nv.read() == BootState("A", "B", 0)
    nv.commit("B")
    assert nv.read() == BootState("B")
    assert calls(l4t) == [
        "-t rootfs set-slot-as-unbootable 1",
        "-t rootfs set-active-boot-slot 1",
        "-t rootfs mark-boot-successful",
    ]
    assert load(l4t / "l4t.json")["slots"][1] == {"retry_count": 3, "status": "normal"}


def test_failed_gate_marks_unbootable_and_returns(l4t: Path) -> None:
    nv = loader(l4t)
    nv.deactivate("B")
    nv.begin_try("B")
    boot(l4t / "l4t.json")
    nv.mark_bad("B")
    assert calls(l4t)[-2:] == [
        "-t rootfs set-slot-as-unbootable 1",
        "-t rootfs set-active-boot-slot 0",
    ]
    assert boot(l4t / "l4t.json") == 0
    assert nv.read() == BootState("A", None, 0, frozenset({"B"}))
    with pytest.raises(InvalidTransition):
        nv.deactivate("A")  # the committed slot


def test_l4t_fallback_after_three_failed_boots_reads_as_a_used_up_try(l4t: Path) -> None:
    nv = loader(l4t)
    nv.deactivate("B")
    nv.begin_try("B")
    path = l4t / "l4t.json"
    assert [boot(path, fails=True) for _ in range(3)] == [1, 1, 1]
    assert load(path)["slots"][1]["status"] == "unbootable"
    assert boot(path) == 0
    state = nv.read()
    assert state == BootState("A", "B", 0)  # tried, used up, booted A: reconcile marks it bad


def test_a_pending_try_survives_a_power_cut_before_the_boot(l4t: Path) -> None:
    nv = loader(l4t)
    nv.deactivate("B")
    nv.begin_try("B")
    assert NvBootCtrlLoader(nv.record.path).read() == BootState("A", "B", 1)


def test_errors_name_the_command_and_stderr(l4t: Path) -> None:
    with pytest.raises(LoaderError, match="Invalid slot number: 9"):
        loader(l4t)._run("set-active-boot-slot", "9")
    with pytest.raises(LoaderError, match="only on a Jetson"):
        NvBootCtrlLoader(l4t / "rec", "nvbootctrl-missing").read()


def test_the_spec_and_the_default_record() -> None:
    from appliance.slots.nvbootctrl import DEFAULT_RECORD

    assert NvBootCtrlLoader().record.path == DEFAULT_RECORD
    assert "nvbootctrl" in NvBootCtrlLoader().describe()
