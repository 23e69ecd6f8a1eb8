"""kiln model compare: A/B table, per-site gate, HTML + PNG report; the CLI end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from image.model.compare import CompareFailedError, compare_packages, format_comparison
from image.model.optimise import optimise
from image.model.report import write_report

KILN = [sys.executable, "-m", "image.cli"]


@pytest.fixture(scope="module")
def int8_pkg(colour_pkg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "colour-int8"
    optimise(colour_pkg, "onnxruntime", out, select="int8", timing_rounds=1)
    return out


@pytest.fixture(scope="module")
def swapped_pkg(colour_pkg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A worse NEW model: its red and green output rows are swapped."""
    import hashlib

    pkg = tmp_path_factory.mktemp("bad") / "colour-swapped"
    shutil.copytree(colour_pkg, pkg)
    model = onnx.load(str(pkg / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "fw":
            w = numpy_helper.to_array(init).copy()
            w[[0, 1]] = w[[1, 0]]
            init.CopyFrom(numpy_helper.from_array(w, "fw"))
    data = model.SerializeToString()
    (pkg / "model.onnx").write_bytes(data)
    m = json.loads((pkg / "model.json").read_text())
    m["files"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    m["version"] = "2.0.0"
    (pkg / "model.json").write_text(json.dumps(m))
    return pkg


def test_fp32_vs_int8_passes_with_report(colour_pkg: Path, int8_pkg: Path, tmp_path: Path) -> None:
    c = compare_packages(colour_pkg, int8_pkg, timing_rounds=1)
    assert c.passed and c.agreement >= 0.99 and c.tvd < 0.02
    assert c.new.size_bytes > 0 and c.new.file.startswith("model_int8")
    text = format_comparison(c)
    assert "top-1" in text and "gate: pass" in text
    html = write_report(c, tmp_path / "rep")
    assert "PASS" in html.read_text()
    import matplotlib.image as mpimg

    for name in ("summary.png", "confusion.png", "distribution.png"):
        img = mpimg.imread(tmp_path / "rep" / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert name in html.read_text()


def test_worse_model_fails_and_confusion_shows_the_swap(
    colour_pkg: Path, swapped_pkg: Path
) -> None:
    c = compare_packages(colour_pkg, swapped_pkg, timing_rounds=1)
    assert not c.passed and "below OLD" in c.reasons[0]
    red, green = 0, 1
    assert c.confusion_delta[red, green] > 0 and c.confusion_delta[green, red] > 0
    assert c.confusion_delta[red, red] < 0
    assert c.agreement < 0.8
    text = format_comparison(c)
    assert "red->green +" in text and "gate: FAIL" in text


def test_compare_on_given_data(colour_pkg: Path, int8_pkg: Path, tmp_path: Path) -> None:
    with np.load(colour_pkg / "reference.npz") as z:
        np.savez(tmp_path / "site.npz", images=z["images"][:20], labels=z["labels"][:20])
    c = compare_packages(colour_pkg, int8_pkg, data=tmp_path / "site.npz", timing_rounds=1)
    assert c.images == 20


def test_cli_optimise_and_compare(
    colour_pkg: Path, swapped_pkg: Path, constant_calibration: Path, tmp_path: Path
) -> None:
    env_out = tmp_path / "cli-out"

    def kiln(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*KILN, *args], check=False, capture_output=True, text=True, timeout=120
        )

    r = kiln(
        "model",
        "optimise",
        str(colour_pkg),
        "--target",
        "onnxruntime",
        "-o",
        str(env_out),
        "--select",
        "int8",
        "--no-cache",
    )
    assert r.returncode == 0, r.stderr
    assert "<- selected" in r.stdout and "int8" in r.stdout
    r = kiln(
        "model",
        "optimise",
        str(colour_pkg),
        "--target",
        "onnxruntime",
        "-o",
        str(tmp_path / "bad"),
        "--calibration",
        str(constant_calibration),
        "--no-cache",
    )
    assert r.returncode == 3
    assert "fails the accuracy gate" in r.stderr and "Traceback" not in r.stderr
    r = kiln(
        "model", "compare", str(colour_pkg), str(swapped_pkg), "--report", str(tmp_path / "rep")
    )
    assert r.returncode == CompareFailedError.exit_code
    assert "gate: FAIL" in r.stdout and (tmp_path / "rep" / "report.html").exists()


def _perturbed(src: Path, dst: Path, classes: int) -> Path:
    """NEW: the same net with the head rows of 10 class pairs swapped (a worse model)."""
    import hashlib

    pkg = Path(shutil.copytree(src, dst))
    model = onnx.load(str(pkg / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "fw":
            w = numpy_helper.to_array(init).copy()
            rows = np.arange(20) * (classes // 20)
            w[rows] = w[np.roll(rows, 1)]
            init.CopyFrom(numpy_helper.from_array(w, "fw"))
    data = model.SerializeToString()
    (pkg / "model.onnx").write_bytes(data)
    m = json.loads((pkg / "model.json").read_text())
    m["files"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    m["version"] = "2.0.0"
    (pkg / "model.json").write_text(json.dumps(m))
    return pkg


@pytest.mark.slow
@pytest.mark.parametrize("classes", [100, 1000])
def test_compare_stays_readable_at_many_classes(classes: int, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    from tests.models.mobilenet_like import make_mobilenet_package

    old = make_mobilenet_package(tmp_path / "old", count=96, calib=4, classes=classes)
    new = _perturbed(old, tmp_path / "new", classes)
    c = compare_packages(old, new, timing_rounds=1, max_accuracy_drop=1.0)
    recall = c.per_class_recall(c.old)
    assert np.isnan(recall).sum() >= classes - 96  # no reference image: n/a, not 0.000
    text = format_comparison(c)
    lines = text.splitlines()
    # Summary first, then at most 10 rows per section: a screen, not one row per class.
    assert lines[1].startswith("gate: ") and lines[2].startswith("agreement ")
    assert f"classes: {classes}, " in lines[3] and "recall n/a for the other" in lines[3]
    assert len(lines) <= 45, len(lines)
    assert "the 10 largest changes of" in text or "largest changes of" in text
    # The report holds the full tables: every class, n/a where it had no image.
    html = write_report(c, tmp_path / "rep").read_text()
    assert all(f"class_{i:03d}" in html for i in range(0, classes, max(1, classes // 50)))
    assert "n/a" in html and f"recall per class (all {classes})" in html
    for name in ("confusion.png", "distribution.png"):
        img = mpimg.imread(tmp_path / "rep" / name)
        h, w = img.shape[:2]
        assert 150 < h < 1500 and 400 < w < 2000, (name, img.shape)
        assert img[..., :3].mean() > 0.6, name  # mostly white background, not a black block
