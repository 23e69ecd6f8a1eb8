"""``appliance slots`` end to end on the file and GRUB back ends, as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.slots import grubenv
from appliance.slots.grub import initial_env
from appliance.state import SlotRecord, load_state, note_slot, record_installed

APPLIANCE = str(Path(sys.executable).parent / "appliance")


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([APPLIANCE, "slots", *args], capture_output=True, text=True, check=False)
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc


def test_status_commit_and_rollback_on_grub(tmp_path: Path) -> None:
    esp = tmp_path / "esp"
    (esp / "grub").mkdir(parents=True)
    for name in ("grubenv", "grubenv.bak"):
        (esp / "grub" / name).write_bytes(initial_env())
    data = tmp_path / "data"
    record_installed(data, SlotRecord("B", "1.1.0", 4))
    loader = f"--loader=grub:{esp}"
    status = json.loads(run("status", loader, "--booted=A", "--json").stdout)
    assert status["slots"] == {"A": "committed", "B": "inactive"}
    # B was installed and tried (grub.cfg counted the try down); we are running B now.
    env = grubenv.parse((esp / "grub" / "grubenv").read_bytes()) or {}
    env.update(ek_try="B", ek_tries_left="0")
    (esp / "grub" / "grubenv").write_bytes(grubenv.render(env))
    assert "tried" in run("status", loader, "--booted=B").stdout
    run("mark-bad", "A", loader, "--booted=B", ok=False)  # the committed slot is protected
    run("mark-good", loader, "--booted=B", f"--data-dir={data}")
    state = load_state(data)
    assert state.security_floor == 4
    assert state.committed is not None and state.committed.slot == "B"
    status = json.loads(run("status", loader, "--booted=B", "--json").stdout)
    assert status["slots"] == {"A": "inactive", "B": "committed"}
    before = (esp / "grub" / "grubenv").read_bytes()
    # Slot A's release was never recorded here: its level is unknown, so no rollback to it.
    refused = run("rollback", loader, "--booted=B", f"--data-dir={data}", ok=False)
    assert "slot A holds no release this device recorded" in refused.stderr
    note_slot(data, SlotRecord("A", "1.0.0", 3))  # below the floor 4
    refused = run("rollback", loader, "--booted=B", f"--data-dir={data}", ok=False)
    assert "slot A holds 1.0.0 (security_version 3), below this device's anti-rollback floor 4" in (
        refused.stderr
    )
    assert (esp / "grub" / "grubenv").read_bytes() == before
    note_slot(data, SlotRecord("A", "1.0.1", 4))
    out = run("rollback", loader, "--booted=B", f"--data-dir={data}").stdout
    assert "next boot: slot A" in out
    assert grubenv.parse((esp / "grub" / "grubenv").read_bytes())["ek_try"] == "A"  # type: ignore[index]


def test_unknown_loader_and_missing_booted_slot_are_one_line_errors(tmp_path: Path) -> None:
    proc = run("status", "--loader=floppy", ok=False)
    assert proc.stderr.startswith("error: unknown slot loader 'floppy'")
    proc = run("mark-good", f"--loader=file:{tmp_path / 's.env'}", ok=False)
    assert "edgekiln.slot" in proc.stderr


def test_transitions_wait_for_the_slot_lock(tmp_path: Path) -> None:
    import fcntl
    import os

    state = tmp_path / "s.env"
    note_slot(tmp_path / "data", SlotRecord("B", "1.0.0", 0))
    lock = os.open(f"{state}.lock", os.O_WRONLY | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another actor (the agent, the TUI) is mid-transition
    proc = subprocess.Popen(
        [
            APPLIANCE,
            "slots",
            "rollback",
            f"--loader=file:{state}",
            "--booted=A",
            f"--data-dir={tmp_path / 'data'}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        assert not state.exists()
    finally:
        os.close(lock)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "next boot: slot B" in out
