"""The package skeleton: CLIs answer, and ``import appliance`` stays light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.fsutil import atomic_write_bytes

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["kiln", "appliance"])
def test_cli_help_lists_commands(command: str) -> None:
    out = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, check=True)
    assert "Commands:" in out.stdout


def test_import_appliance_needs_only_core_dependencies() -> None:
    heavy = ["openvino", "textual", "zeroconf", "torch", "onnxruntime", "cv2", "tensorrt", "image"]
    code = (
        "import sys, appliance, appliance.cli, appliance.errors\n"
        f"bad = [m for m in {heavy!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_atomic_write_replaces_and_keeps_old_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"

    class Boom(Exception):
        pass

    from appliance.fsutil import atomic_writer

    with pytest.raises(Boom), atomic_writer(target) as handle:
        handle.write(b"half")
        raise Boom
    assert target.read_bytes() == b"one"
    assert os.listdir(tmp_path) == ["state.json"]


def test_cli_error_is_one_line_and_nonzero() -> None:
    cmd = [str(BIN / "appliance"), "no-such-command"]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert out.returncode != 0
    assert "No such command" in out.stderr
