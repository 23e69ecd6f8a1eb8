"""The builder's model step: ``[models] optimise = true`` puts the optimised package in the slot.

Real inputs throughout: the real reference packages (recipes/models), the real optimiser on
onnxruntime, the real slot stage (mke2fs -d), read back with debugfs, and the device's own
self-test run on the package copied out of the slot image. The base root is a small tarball and
the runtime a placeholder folder: neither is what this tests (tests/image/test_build.py builds
those for real).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.package import load_package
from appliance.inference.selftest import run_selftest
from image.build.pipeline import Pipeline
from image.model.stage import KIND, ModelStepError, fallback_backends, model_key
from image.recipe import load_recipe
from tests.image.slot_stage import Recorder, copy_recipes, rdump, run_slot
from tests.timing import NO_LATENCY_GATE

pytestmark = [pytest.mark.integration]
KILN = Path(sys.executable).parent / "kiln"
# The opt-in: OpenCV in the runtime, and slots the size check accepts for it.
WITH_OPENCV = '[runtime]\nextras = ["opencv"]\n[partitions]\nrootfs_mib = 1280\n'


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real recipes and reference packages; ``plain`` and ``opt`` (optimise, smallest) on top."""
    top = copy_recipes(tmp_path_factory.mktemp("recipes"))
    # "smallest" depends on file sizes only, so the selection is the same on every run.
    (top / "opt.toml").write_text(
        'extends = "plain.toml"\n[models]\noptimise = true\nselect = "smallest"\n'
    )
    return top


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def built(
    recipes: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    pipe, rec, slot = run_slot(recipes / "opt.toml", cache, tmp_path_factory.mktemp("out"))
    return {"pipe": pipe, "rec": rec, "slot": slot}


def test_slot_holds_the_optimised_packages_and_the_device_accepts_them(
    built: dict[str, object], tmp_path: Path
) -> None:
    slot, pipe, rec = built["slot"], built["pipe"], built["rec"]
    assert isinstance(slot, Path) and isinstance(pipe, Pipeline) and isinstance(rec, Recorder)
    for role in ("primary", "fallback"):
        step = rec.results[f"model:{role}"]
        assert not step.cached and step.key and f"{role}: " in step.detail
        pkg_dir = rdump(slot, f"/opt/edgekiln/models/{role}", tmp_path / role)
        pkg = load_package(pkg_dir)
        # The smallest variant that passes the gate on onnxruntime is an INT8 QDQ ONNX, and
        # models.fuse (default) adds its fused variant (tests/image/test_model_fuse_build.py).
        # The recipe's runtime has no OpenCV (no [runtime] extras): no FP32 file ships for a
        # back end it lacks (with OpenCV it would: tests/models/test_mobilenet_like.py).
        f, fused = pkg.manifest.files
        assert (f.format, f.precision) == ("onnx", "int8")
        assert f.path.startswith("model_int8") and fused.fused is not None
        assert fused.fused.of == f.path
        assert not (pkg_dir / "model.onnx").exists()
        table = json.loads((pkg_dir / "optimisation.json").read_text())
        assert not any("opencv" in n for n in table["notes"]), table["notes"]
        assert table["runtime"] == "onnxruntime"
        assert table["selected"] in ("int8", "int8-u8s8", "int8-u8s7")
        chosen = next(v for v in table["variants"] if v["name"] == table["selected"])
        assert chosen["passed"] and chosen["drop_pp"] <= 1.0 + 1e-9
        assert chosen["size_bytes"] == min(v["size_bytes"] for v in table["variants"])
        summary = pipe.components["model_optimisation"][role]
        assert summary["selected"] == table["selected"] and summary["precision"] == "int8"
        # The device's own self-test (reference split, sha256 of the file) passes on it.
        report = run_selftest(pkg_dir, "onnxruntime", budget_factor=NO_LATENCY_GATE)
        assert report.passed, report.reasons
        assert report.file == fused.path  # what the pipeline runs
    slot_stage = next(s for s in pipe.report.stages if s.name == "slot")
    assert "primary: int8" in slot_stage.detail and "fallback: " in slot_stage.detail


def test_model_step_is_cached_and_the_slot_key_follows_the_result(
    built: dict[str, object], recipes: Path, cache: Path, tmp_path: Path
) -> None:
    first = built["pipe"]
    assert isinstance(first, Pipeline)
    pipe, rec, slot = run_slot(recipes / "opt.toml", cache, tmp_path / "again")
    assert rec.results["model:primary"].cached and rec.results["model:fallback"].cached
    assert rec.results["slot"].cached and slot == built["slot"]
    assert pipe.components["model_optimisation"] == first.components["model_optimisation"]
    # Without optimisation the slot holds other model trees, so its key differs.
    _, plain_rec, _ = run_slot(recipes / "plain.toml", cache, tmp_path / "plain")
    assert "model:primary" not in plain_rec.results
    assert plain_rec.results["slot"].key != rec.results["slot"].key
    # The model key follows the options and the package's bytes.
    opt = load_recipe(recipes / "opt.toml")
    pkg = recipes / "models" / "inspect-primary"
    key = model_key(pkg, "generic-x86-64", opt.recipe.models)
    assert rec.results["model:primary"].key == key
    assert (cache / KIND / key / "package" / "model.json").is_file()
    stricter = tmp_path / "strict.toml"
    stricter.write_text(f'extends = "{recipes}/opt.toml"\n[models]\nmax_accuracy_drop = 0.5\n')
    assert model_key(pkg, "generic-x86-64", load_recipe(stricter).recipe.models) != key
    assert model_key(pkg, "intel-openvino", opt.recipe.models) != key
    # ... and the back ends the runtime carries ([runtime] extras = ["opencv"]: FP32 beside).
    with_cv = tmp_path / "with-opencv.toml"
    with_cv.write_text(f'extends = "{recipes}/opt.toml"\n{WITH_OPENCV}')
    assert fallback_backends(load_recipe(with_cv)) == ("opencv",)
    assert fallback_backends(opt) == ()
    assert model_key(pkg, "generic-x86-64", opt.recipe.models, ("opencv",)) != key
    changed = Path(shutil.copytree(pkg, tmp_path / "changed"))
    (changed / "provenance.txt").write_text("retrained\n")
    assert model_key(changed, "generic-x86-64", opt.recipe.models) != key


def test_plan_shows_the_model_step(built: dict[str, object], recipes: Path, cache: Path) -> None:
    def plan(recipe: str, cache_dir: Path) -> str:
        argv = [str(KILN), "build", str(recipes / recipe), "--plan", "--cache", str(cache_dir)]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    out = plan("opt.toml", cache)
    assert '"optimise": true' in out and '"select": "smallest"' in out
    assert "optimise for generic-x86-64 (top-1 drop <= 1 pp, select smallest)" in out
    assert re.search(r"primary [0-9a-f]{12} \(cached\), fallback [0-9a-f]{12} \(cached\)", out)
    assert re.search(r"primary [0-9a-f]{12} \(to run\)", plan("opt.toml", cache / "empty"))
    assert "models as given (models.optimise = false)" in plan("plain.toml", cache)
    assert "fuse the ONNX file onnxruntime picks from each package, if any, for BGR frames" in out
    # The runtime's back ends and extras; with OpenCV the model step keys and says more.
    assert "runtime for generic-x86-64: back ends onnxruntime; extras none" in out
    (recipes / "opt-cv.toml").write_text(f'extends = "opt.toml"\n{WITH_OPENCV}')
    cv = plan("opt-cv.toml", cache)
    assert "back ends onnxruntime, opencv; extras opencv" in cv
    assert "select smallest, FP32 beside a file opencv cannot load): primary" in cv
    assert re.search(r"primary [0-9a-f]{12} \(to run\)", cv)  # another key than opt.toml's


def test_bad_calibration_fails_the_build_naming_recipe_and_figures(
    recipes: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "recipes"
    shutil.copytree(recipes, bad, symlinks=True)
    calib = bad / "models" / "inspect-fallback" / "calibration.npz"
    with np.load(calib) as npz:
        images, labels = npz["images"], npz["labels"]
    # Constant grey frames: the activation ranges say nothing about real frames.
    np.savez_compressed(calib, images=np.full_like(images, 128), labels=labels)
    with pytest.raises(ModelStepError) as exc:
        run_slot(bad / "opt.toml", tmp_path / "cache", tmp_path / "out")
    msg = str(exc.value)
    assert msg.startswith(f"{bad / 'opt.toml'}: models.optimise: the fallback package fails")
    assert "vs FP32 0.9609" in msg
    assert re.search(r"pp drop (\(host; avx2: [0-9.]+ pp\) )?> 1\.00 pp allowed", msg), msg
    assert 'models.select = "fp32"' in msg
    # The primary passed and is cached; nothing half-made of the fallback is left, and no slot.
    entries = list((tmp_path / "cache" / KIND).iterdir())
    assert len(entries) == 1 and (entries[0] / "complete").exists()
    assert not (tmp_path / "cache" / "slot").exists()
