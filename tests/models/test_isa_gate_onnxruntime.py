"""INT8 for generic-x86-64 (onnxruntime) holds on a CPU without VNNI (docs/decisions.md §30).

onnxruntime's MLAS picks its INT8 kernels by CPUID, with no switch to cap them: ``kiln model
optimise`` evaluates each INT8 row again under ``qemu-x86_64-static -cpu Haswell`` (AVX2, no
AVX-512, no VNNI). These tests run the device's self-test of the shipped file under the same
emulation, in a subprocess. Any x86-64 CPU: on an AVX2-only CPU the emulation changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from image.model.isa import QEMU, QEMU_CPU, QEMU_PACKAGE, IsaCapError, launcher
from image.model.optimise import optimise
from tests.models.fixtures import copy_reference
from tests.timing import NO_LATENCY_GATE


def _selftest_under_haswell(pkg: Path) -> subprocess.CompletedProcess[str]:
    """The device's self-test of ``pkg`` on onnxruntime, on qemu-user's AVX2-only CPU."""
    appliance = str(Path(sys.executable).with_name("appliance"))
    args = ["--model", str(pkg), "--backend", "onnxruntime"]
    args += ["--budget-factor", str(NO_LATENCY_GATE)]
    return subprocess.run(
        [*launcher("onnxruntime"), sys.executable, appliance, "selftest", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    "name",
    [
        "inspect-fallback",  # 8-bit QDQ: 95.70 % on a VNNI host, 82.42 % on Haswell
        pytest.param("inspect-primary", marks=pytest.mark.slow),
    ],
)
def test_generic_int8_file_passes_the_selftest_under_haswell(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pkg = copy_reference(name, tmp_path)
    res = optimise(pkg, "generic-x86-64", out, select="int8", timing_rounds=1)
    best = res.variant(res.selected)
    assert best.precision == "int8" and best.passed
    assert set(best.drop_pp_isa) == {"host", "avx2"}, best
    assert max(best.drop_pp_isa.values()) <= 1.0 + 1e-9, best
    done = _selftest_under_haswell(out)
    assert done.returncode == 0 and "PASS" in done.stdout, (done.stdout, done.stderr[-2000:])


def test_without_qemu_user_the_gate_names_the_package_or_runs_only_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = copy_reference("inspect-fallback", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(IsaCapError, match=rf"{QEMU}.*apt-get install {QEMU_PACKAGE}"):
        optimise(pkg, "generic-x86-64", tmp_path / "a", select="fp32", timing_rounds=1)
    res = optimise(
        pkg,
        "generic-x86-64",
        tmp_path / "b",
        select="fp32",
        timing_rounds=1,
        weakest_isa_gate=False,
    )
    assert not any(v.drop_pp_isa for v in res.variants)
    table = json.loads((tmp_path / "b" / "optimisation.json").read_text())
    assert any("weakest-ISA gate NOT run" in n for n in table["notes"]), table["notes"]


def test_the_child_refuses_on_a_cpu_with_avx512(tmp_path: Path) -> None:
    """What the gate does if the emulation did not hide AVX-512/VNNI: refuse, naming them."""
    if "avx512f" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("an AVX2-only CPU is the weakest ISA already")
    pkg = copy_reference("inspect-fallback", tmp_path)
    spec = json.dumps({"runtime": "onnxruntime", "threads": 1, "runs": [], "isa": "avx2"})
    done = subprocess.run(
        [sys.executable, "-m", "image.model.isa", str(pkg), spec],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "AVX512F" in done.stderr, done.stderr
    assert f"{QEMU} -cpu {QEMU_CPU}" in done.stderr


def test_tensorrt_proxy_is_not_gated_under_emulation(tmp_path: Path) -> None:
    """jetson-orin's INT8 runs on TensorRT's kernels: no 7-bit row, no qemu-user run."""
    pkg = copy_reference("inspect-fallback", tmp_path)
    res = optimise(pkg, "jetson-orin", tmp_path / "out", timing_rounds=1)
    assert "int8-u8s7" not in [v.name for v in res.variants]
    assert not any(v.drop_pp_isa for v in res.variants)
