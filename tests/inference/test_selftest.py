"""The self-test gate (function and CLI), and the `appliance run` / `backends` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.selftest import run_selftest, subset_indices
from tests.timing import NO_LATENCY_GATE

APPLIANCE = str(Path(sys.executable).parent / "appliance")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "opencv"])
def test_selftest_passes_on_a_good_package(tiny_package: Path, backend: str) -> None:
    r = run_selftest(tiny_package, backend, budget_factor=NO_LATENCY_GATE)
    assert r.passed and r.top1 == 1.0 and r.images == 8 and r.backend == backend
    assert 0 < r.infer_p50_ms <= r.infer_p95_ms and r.total_p95_ms >= r.infer_p95_ms


def test_subset_is_fixed_and_spread_over_classes() -> None:
    labels = np.repeat(np.arange(4), 64)
    idx = subset_indices(labels, 16)
    assert len(idx) == 16 and np.array_equal(idx, subset_indices(labels, 16))
    assert np.bincount(labels[idx]).tolist() == [4, 4, 4, 4]


def _break_labels(pkg: Path) -> None:
    with np.load(pkg / "reference.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    np.savez_compressed(pkg / "reference.npz", images=images, labels=(labels + 1) % 4)


def test_selftest_fails_below_the_accuracy_gate(tiny_package: Path) -> None:
    _break_labels(tiny_package)
    r = run_selftest(tiny_package, "onnxruntime")
    assert not r.passed and r.top1 == 0.0
    assert any("top-1 0.0000 (0/8) is below the gate 1.0000" in x for x in r.reasons)


def test_selftest_latency_gate_uses_the_budget_factor(tiny_package: Path) -> None:
    r = run_selftest(tiny_package, "onnxruntime", budget_factor=1e-9)
    assert not r.passed and any("infer p95" in x for x in r.reasons)
    assert r.budget_infer_ms == pytest.approx(20.0 * 1e-9)


def test_cli_selftest_exit_codes(tiny_package: Path) -> None:
    ok = subprocess.run(
        [APPLIANCE, "selftest", "--model", str(tiny_package), "--json", "--budget-factor", "1e6"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    _break_labels(tiny_package)
    bad = subprocess.run(
        [APPLIANCE, "selftest", "--model", str(tiny_package), "--backend", "opencv"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 3
    assert "FAIL: top-1" in bad.stdout and "error: self-test failed" in bad.stderr


def test_cli_selftest_on_a_missing_package_is_one_clean_line(tmp_path: Path) -> None:
    r = subprocess.run(
        [APPLIANCE, "selftest", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        r.stderr.strip()
        == f"error: {tmp_path}/model.json: not found; is {tmp_path} a model package?"
    )


def test_cli_run_and_backends(tiny_package: Path, tmp_path: Path) -> None:
    sink = tmp_path / "out.jsonl"
    r = subprocess.run(
        [
            APPLIANCE,
            "run",
            "--model",
            str(tiny_package),
            "--source",
            f"npz:{tiny_package}/reference.npz",
            "--sink",
            str(sink),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("8 frames (0 degraded")
    results = [json.loads(x) for x in sink.read_text().splitlines() if '"result"' in x]
    assert len(results) == 8
    b = subprocess.run(
        [APPLIANCE, "backends", "--json"], capture_output=True, text=True, check=True
    )
    status = {s["name"]: s["ok"] for s in json.loads(b.stdout)}
    assert status["onnxruntime"] and not status["tensorrt"]


def test_subset_gate_is_a_binomial_test() -> None:
    from appliance.inference.selftest import min_correct

    # Full split: 0.5 pp below the expected top-1.
    assert min_correct(256, 0.8828, subset=False) == 225
    # 16 images of an 88 % model: 12/16 is ordinary luck and passes; chance level (4/16) fails.
    need = min_correct(16, 0.8828, subset=True)
    assert 4 < need <= 12
    # A model expected to be perfect must be perfect on any subset.
    assert min_correct(16, 1.0, subset=True) == 16


def test_health_check_subset_passes_with_an_imperfect_model(tmp_path: Path) -> None:
    from tests.inference.fixtures import make_package, rewrite_manifest

    pkg = make_package(tmp_path / "p", count=32)
    with np.load(pkg / "reference.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    labels = labels.copy()
    labels[::8] = (labels[::8] + 1) % 4  # the model now "misses" 4 of 32: top-1 0.875
    np.savez_compressed(pkg / "reference.npz", images=images, labels=labels)
    rewrite_manifest(pkg, reference__top1=0.875)
    full = run_selftest(pkg, "onnxruntime", budget_factor=1e6)
    subset = run_selftest(pkg, "onnxruntime", limit=8, budget_factor=1e6)
    assert full.passed and full.top1 == 0.875
    assert subset.passed and subset.images == 8
