"""``kiln model edgetpu``: a precompiled Edge TPU file is checked before it is listed; without
``edgetpu_compiler`` the command says it is needed; with one on PATH it is run.

The files are the real reference package's .tflite files, and an Edge TPU file laid out as
edgetpu_compiler writes one (tests/inference/edgetpu_file.py). ``edgetpu_compiler`` is not
installable here: one test puts a stand-in script of that name on PATH (the outermost edge).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.inference.package import load_package
from image.model.cli import model as model_cli
from image.model.edgetpu import (
    EdgeTpuCompilerMissingError,
    EdgeTpuFileError,
    add_edgetpu_file,
    compile_edgetpu,
)
from image.model.passthrough import passthrough_litert
from image.model.tflite_file import TfliteFormatError, read_tflite
from tests.inference.edgetpu_file import edgetpu_tflite
from tests.models.fixtures import REFERENCE_MODELS, copy_reference

REPO = Path(__file__).resolve().parents[2]


def test_a_precompiled_file_is_checked_and_listed(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-primary", tmp_path)
    compiled = tmp_path / "model_int8_edgetpu.tflite"
    compiled.write_bytes(edgetpu_tflite((pkg / "model_int8.tflite").read_bytes()))
    result = CliRunner().invoke(model_cli, ["edgetpu", str(pkg), "--compiled", str(compiled)])
    assert result.exit_code == 0, result.output
    assert "model_int8_edgetpu.tflite (checked" in result.output
    files = {f.path: f for f in load_package(pkg).manifest.files}
    f = files["model_int8_edgetpu.tflite"]
    src = files["model_int8.tflite"]
    assert f.format == "edgetpu-tflite" and f.quantization == src.quantization
    assert (pkg / f.path).read_bytes() == compiled.read_bytes()
    # The optimiser's table for a Coral target names it as what runs when the delegate loads.
    res = passthrough_litert(load_package(pkg), "coral-usb-arm64", tmp_path / "out")
    assert res.selected == "model_int8_edgetpu.tflite"
    assert any("runs when the Edge TPU delegate loads" in n for n in res.notes)


def test_a_renamed_cpu_tflite_is_refused(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-primary", tmp_path)
    before = (pkg / "model.json").read_bytes()
    for name in ("model_int8.tflite", "model.tflite"):
        fake = tmp_path / "model_int8_edgetpu.tflite"
        shutil.copy(pkg / name, fake)
        with pytest.raises(EdgeTpuFileError, match="no operator uses the custom op 'edgetpu-cu"):
            add_edgetpu_file(pkg, fake)
    assert (pkg / "model.json").read_bytes() == before
    assert not (pkg / "model_int8_edgetpu.tflite").exists()


def test_a_file_compiled_from_another_model_is_refused(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-primary", tmp_path)
    other = (REFERENCE_MODELS / "inspect-fallback" / "model_int8.tflite").read_bytes()
    compiled = tmp_path / "model_int8_edgetpu.tflite"
    compiled.write_bytes(edgetpu_tflite(other))
    with pytest.raises(EdgeTpuFileError, match=r"compile this package's model_int8\.tflite"):
        add_edgetpu_file(pkg, compiled)


def test_without_edgetpu_compiler_the_command_says_it_is_needed(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-primary", tmp_path)
    empty = tmp_path / "bin"
    empty.mkdir()
    result = CliRunner().invoke(model_cli, ["edgetpu", str(pkg)], env={"PATH": str(empty)})
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert "edgetpu_compiler is not on PATH and it is needed to make the Edge TPU file" in text
    assert "--compiled" in text and "edgetpu-compiler" in text
    assert f"{pkg / 'model_int8.tflite'}: edgetpu_compiler" in text
    with pytest.raises(EdgeTpuCompilerMissingError):
        compile_edgetpu(pkg / "model_int8.tflite", tmp_path, None)
    # The optimiser's notes for a Coral target say the same.
    res = passthrough_litert(load_package(pkg), "coral-usb-arm64", tmp_path / "out")
    if shutil.which("edgetpu_compiler") is None:
        assert any("edgetpu_compiler is needed to make it" in n for n in res.notes)


STAND_IN = """#!{python}
# Stand-in for Coral's edgetpu_compiler (not installable here): edgetpu_compiler -s -o DIR SRC
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.inference.edgetpu_file import edgetpu_tflite
args = sys.argv[1:]
out, src = Path(args[args.index("-o") + 1]), Path(args[-1])
(out / (src.stem + "_edgetpu.tflite")).write_bytes(edgetpu_tflite(src.read_bytes()))
print("Edge TPU Compiler version 16.0 (stand-in)")
"""


def test_edgetpu_compiler_on_path_is_run(tmp_path: Path) -> None:
    pkg = copy_reference("inspect-primary", tmp_path)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "edgetpu_compiler"
    tool.write_text(STAND_IN.format(python=sys.executable, repo=str(REPO)))
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = CliRunner().invoke(model_cli, ["edgetpu", str(pkg)], env=env)
    assert result.exit_code == 0, result.output
    assert "compiled with edgetpu_compiler" in result.output
    m = json.loads((pkg / "model.json").read_text())
    assert [f["format"] for f in m["files"]][-1] == "edgetpu-tflite"
    # A compiler that fails is reported with its own words.
    tool.write_text("#!/bin/sh\necho 'Model not quantized' >&2\nexit 1\n")
    with pytest.raises(EdgeTpuFileError, match=r"exit 1.*Model not quantized"):
        compile_edgetpu(pkg / "model_int8.tflite", tmp_path, str(tool))


# --- the .tflite reader is a parser of untrusted bytes ------------------------------------------

MALFORMED = {
    b"": "TFL3 file identifier",
    b"\x00" * 8: "TFL3 file identifier",
    b"\x10\x00\x00\x00TFL3": "outside the file",
    b"\xff\xff\xff\x7fTFL3\x00\x00\x00\x00": "outside the file",
    b"\x0c\x00\x00\x00TFL3\x00\x00\x00\x00\x04\x00\x00\x00": "no subgraph",
    b"\x0c\x00\x00\x00TFL3\x00\x00\x00\x00\xf0\xff\xff\xff": "outside the file",
}


@pytest.mark.parametrize("data", list(MALFORMED))
def test_malformed_tflite_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(TfliteFormatError, match=MALFORMED[data]):
        read_tflite(data, "bad.tflite")


def test_truncated_real_files_are_refused() -> None:
    data = (REFERENCE_MODELS / "inspect-primary" / "model_int8.tflite").read_bytes()
    for cut in (12, 64, 1000, len(data) // 2):
        with pytest.raises(TfliteFormatError, match=r"bad\.tflite: not a valid \.tflite file"):
            read_tflite(data[:cut], "bad.tflite")


REAL = (REFERENCE_MODELS / "inspect-primary" / "model_int8.tflite").read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_tflite_files_parse_or_are_refused_by_name(data: st.DataObject) -> None:
    """Any byte flips in a real file: a result, or TfliteFormatError; never anything else."""
    buf = bytearray(REAL)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(TfliteFormatError):
        read_tflite(bytes(buf), "m.tflite")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_are_refused_by_name(blob: bytes) -> None:
    with contextlib.suppress(TfliteFormatError):
        read_tflite(blob[:4] + b"TFL3" + blob[4:], "r.tflite")
