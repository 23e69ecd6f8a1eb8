"""The boot-level deadline of a tried slot: the command on a real grubenv, the units in systemd.

The units are the image's own (``image/build/overlay``), rendered as the builder renders them, and
parsed by ``systemd-analyze verify``. They are not *run* by a systemd here: a service manager
started outside a booted system moves the host's processes between cgroups (tried once, see
the #7 report); running them is the QEMU end-to-end suite's job.
"""

from __future__ import annotations

import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.slots import grubenv
from appliance.slots.grub import grub_loader, initial_env
from appliance.slots.state import BootState, loader_choice
from appliance.slots.trial import TrialExpired, check_deadline, on_trial_boot
from image.build.rootfs import OverlayConfig, template_values

APPLIANCE = str(Path(sys.executable).parent / "appliance")
OVERLAY = Path(__file__).resolve().parents[2] / "image" / "build" / "overlay"
UNITS = OVERLAY / "etc" / "systemd" / "system"


def make_esp(tmp_path: Path, committed: str, trying: str = "", tries: str = "0") -> Path:
    esp = tmp_path / "esp"
    (esp / "grub").mkdir(parents=True, exist_ok=True)
    env = grubenv.parse(initial_env()) or {}
    env.update(ek_committed=committed, ek_try=trying, ek_tries_left=tries)
    for name in ("grubenv", "grubenv.bak"):
        (esp / "grub" / name).write_bytes(grubenv.render(env))
    return esp


def test_trial_flag_on_the_command_line() -> None:
    assert on_trial_boot("root=PARTLABEL=rootfs_b panic=10 edgekiln.trial=1 edgekiln.slot=B")
    assert not on_trial_boot("panic=10 edgekiln.trial=0 edgekiln.slot=A")
    assert not on_trial_boot("edgekiln.trial=10")


def test_deadline_on_a_committed_slot_changes_nothing(tmp_path: Path) -> None:
    loader = grub_loader(make_esp(tmp_path, "B"))
    assert "committed" in check_deadline(loader, "B", None)
    assert loader.read() == BootState("B")


def test_deadline_on_a_tried_slot_marks_it_bad_and_the_next_boot_is_committed(
    tmp_path: Path,
) -> None:
    loader = grub_loader(make_esp(tmp_path, "A", "B", "0"))  # grub.cfg spent the try
    with pytest.raises(TrialExpired, match="slot B was not committed by its boot deadline"):
        check_deadline(loader, "B", None)
    state = loader.read()
    assert "B" in state.bad and loader_choice(state)[0] == "A"


@pytest.mark.integration
def test_deadline_command_exit_status(tmp_path: Path) -> None:
    esp = make_esp(tmp_path, "A", "B", "0")
    env = {**os.environ, "EDGEKILN_DATA": str(tmp_path / "data")}
    cmd = [APPLIANCE, "slots", "deadline", f"--loader=grub:{esp}"]
    ok = subprocess.run([*cmd, "--booted=A"], check=False, capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "committed" in ok.stdout, ok.stderr
    late = subprocess.run(
        [*cmd, "--booted=B"], check=False, capture_output=True, text=True, env=env
    )
    assert late.returncode != 0 and "boot deadline" in late.stderr
    broken = subprocess.run(
        [APPLIANCE, "slots", "deadline", f"--loader=grub:{tmp_path / 'no-esp'}", "--booted=B"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )
    assert broken.returncode != 0  # an unreadable environment fails too: the unit reboots


def render_units(dest: Path, slots_spec: str) -> list[str]:
    """The deadline units and the agent unit, rendered as image/build/rootfs.py renders them."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for src in sorted(UNITS.glob("edgekiln-*")):
        if not src.is_file():
            continue
        text = src.read_text()
        name = src.name
        if name.endswith(".in"):
            name = name[:-3]
            config = OverlayConfig(30, 60, slots_spec, device_json=b"{}", keyring=None)
            text = string.Template(text).substitute(template_values(config))
        (dest / name).write_text(text)
        names.append(name)
    return names


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_units_parse_cleanly_in_systemd(tmp_path: Path) -> None:
    root = tmp_path / "root"
    names = render_units(root / "etc" / "systemd" / "system", "grub:/boot/efi")
    runtime = root / "opt" / "edgekiln" / "appliance" / "appliance"
    runtime.parent.mkdir(parents=True)
    runtime.write_text("#!/bin/sh\nexit 0\n")
    runtime.chmod(0o755)
    (root / "etc" / "edgekiln").mkdir(parents=True)
    wanted = ["edgekiln-trial-deadline.timer", "edgekiln-trial-deadline.service"]
    assert set(wanted) <= set(names)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}"]
        + [f"/etc/systemd/system/{n}" for n in wanted],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values too; it reports them on stderr.
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    agent = (root / "etc" / "systemd" / "system" / "edgekiln-agent.service").read_text()
    assert "edgekiln-trial-deadline.timer" in agent  # queued even when the agent cannot start
