"""The builder's fuse step: ``[models] fuse = true`` puts fused model files into the slot.

Real inputs: the real recipes and reference packages, the real slot stage (mke2fs -d) read back
with debugfs, and the device's own self-test on the package copied out of the slot image. The
base root is a small tarball and the runtime a placeholder folder (tests/image/test_build.py
builds those for real).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import image.model.fuse as model_fuse
from appliance.inference.package import Fused, load_package
from appliance.inference.selftest import run_selftest
from image.model.fuse_stage import (
    KIND,
    FuseStepError,
    file_to_fuse,
    fuse_key,
    fused_package,
    target_runtime,
)
from image.recipe import load_recipe
from tests.image.slot_stage import REPO, copy_recipes, rdump, run_slot
from tests.timing import NO_LATENCY_GATE

pytestmark = [pytest.mark.integration]
ROLES = ("primary", "fallback")


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real recipes and reference packages; ``plain`` (fuse by default) and ``nofuse``."""
    top = copy_recipes(tmp_path_factory.mktemp("recipes"))
    (top / "nofuse.toml").write_text('extends = "plain.toml"\n[models]\nfuse = false\n')
    return top


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(recipes: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("cache")
    pipe, rec, slot = run_slot(recipes / "plain.toml", cache, tmp_path_factory.mktemp("out"))
    return {"pipe": pipe, "rec": rec, "slot": slot, "cache": cache}


def test_the_default_target_slot_holds_fused_files_the_device_runs(
    built: dict[str, Any], tmp_path: Path
) -> None:
    pipe, rec, slot = built["pipe"], built["rec"], built["slot"]
    for role in ROLES:
        step = rec.results[f"fuse:{role}"]
        assert not step.cached and step.key
        pkg_dir = rdump(slot, f"/opt/edgekiln/models/{role}", tmp_path / role)
        pkg = load_package(pkg_dir)
        paths = [f.path for f in pkg.manifest.files]
        assert paths[:2] == ["model.onnx", "model.fused.onnx"]
        fused = pkg.fused_for(pkg.manifest.files[0])
        assert fused is not None and fused.fused == Fused("model.onnx", "BGR", 4)
        # What the device runs: the self-test (reference split, sha256) picks the fused file.
        report = run_selftest(pkg_dir, "onnxruntime", budget_factor=NO_LATENCY_GATE)
        assert report.passed, report.reasons
        assert report.file == "model.fused.onnx"
        summary = pipe.components["model_fusing"][role]
        assert summary == {
            "runtime": "onnxruntime", "file": "model.onnx", "fused": "model.fused.onnx",
            "color": "BGR", "top_k": 4, "size_bytes": (pkg_dir / "model.fused.onnx").stat().st_size,
            "sha256": sha(pkg_dir / "model.fused.onnx"), "images_checked": 64,
            "checked_on": ["onnxruntime"],
        }  # fmt: skip
        # The source package in the recipe directory is untouched.
        source = pipe.loaded.resolve(getattr(pipe.recipe.models, role))
        assert not (source / "model.fused.onnx").exists()
    slot_stage = next(s for s in pipe.report.stages if s.name == "slot")
    assert slot_stage.detail == (
        "primary: model.onnx -> model.fused.onnx (BGR, top-4, 64 images checked); "
        "fallback: model.onnx -> model.fused.onnx (BGR, top-4, 64 images checked)"
    )


def test_rebuilds_are_cached_and_byte_identical(
    built: dict[str, Any], recipes: Path, tmp_path: Path
) -> None:
    pipe, rec, slot = run_slot(recipes / "plain.toml", built["cache"], tmp_path / "again")
    assert rec.results["fuse:primary"].cached and rec.results["fuse:fallback"].cached
    assert rec.results["fuse:primary"].key == built["rec"].results["fuse:primary"].key
    assert rec.results["slot"].cached and slot == built["slot"]
    assert pipe.components == built["pipe"].components
    assert "(cached)" in next(s for s in pipe.report.stages if s.name == "slot").detail
    # A fresh cache fuses again: the same slot, byte for byte.
    _, fresh_rec, fresh_slot = run_slot(
        recipes / "plain.toml", tmp_path / "fresh", tmp_path / "out"
    )
    assert not fresh_rec.results["fuse:primary"].cached
    assert fresh_rec.results["slot"].key == built["rec"].results["slot"].key
    assert sha(fresh_slot) == sha(built["slot"])


def test_fuse_false_ships_the_packages_as_given(
    built: dict[str, Any], recipes: Path, tmp_path: Path
) -> None:
    pipe, rec, slot = run_slot(recipes / "nofuse.toml", built["cache"], tmp_path / "out")
    assert "fuse:primary" not in rec.results and "model_fusing" not in pipe.components
    assert rec.results["slot"].key != built["rec"].results["slot"].key
    pkg = load_package(rdump(slot, "/opt/edgekiln/models/primary", tmp_path / "p"))
    assert all(f.fused is None for f in pkg.manifest.files)


def test_fuse_defaults_keep_the_recipe_digest(recipes: Path) -> None:
    plain = load_recipe(recipes / "plain.toml")
    assert plain.recipe.models.fuse is True
    assert "fuse" not in plain.to_dict()["models"]  # omitted: old recipes keep their digest
    (recipes / "explicit.toml").write_text('extends = "plain.toml"\n[models]\nfuse = true\n')
    assert load_recipe(recipes / "explicit.toml").digest == plain.digest
    nofuse = load_recipe(recipes / "nofuse.toml")
    assert nofuse.to_dict()["models"]["fuse"] is False and nofuse.digest != plain.digest


@pytest.mark.parametrize(
    ("recipe", "runtime"),
    [
        ("generic-x86-64", "onnxruntime"),
        ("intel-openvino", "openvino"),
        ("coral-usb-arm64", "litert"),
        ("coral-devboard", "litert"),
        ("jetson-orin", "tensorrt"),
    ],
)
def test_each_target_fuses_only_what_its_runtime_runs(
    recipes: Path, tmp_path: Path, recipe: str, runtime: str
) -> None:
    loaded = load_recipe(recipes / f"{recipe}.toml")
    assert target_runtime(loaded) == runtime
    source = recipes / "models" / "inspect-primary"
    file, why = file_to_fuse(source, runtime)
    if runtime in ("onnxruntime", "openvino"):  # the reference package ships no IR
        assert (file, why) == ("model.onnx", "")
        model = fused_package(loaded, "primary", source, tmp_path / "cache", runtime)
        assert model.summary["fused"] == "model.fused.onnx"
        assert model.summary["checked_on"] == list(dict.fromkeys(["onnxruntime", runtime]))
        return
    assert file is None and why == f"{runtime} runs no fused file"
    model = fused_package(loaded, "primary", source, tmp_path / "cache", runtime)
    assert model.path == source and model.summary == {"skipped": why}
    assert not (tmp_path / "cache").exists()


def test_an_openvino_package_with_an_ir_gets_no_fused_file(tmp_path: Path) -> None:
    """What an optimised OpenVINO package looks like when the optimiser picked an IR."""
    import openvino as ov

    pkg = Path(shutil.copytree(REPO / "recipes" / "models" / "inspect-primary", tmp_path / "ov"))
    ov.save_model(ov.convert_model(pkg / "model.onnx"), pkg / "model.xml", compress_to_fp16=False)
    doc = json.loads((pkg / "model.json").read_text())
    doc["files"].insert(0, {
        "path": "model.xml", "format": "openvino-ir", "precision": "fp32",
        "sha256": sha(pkg / "model.xml"), "weights_sha256": sha(pkg / "model.bin"),
    })  # fmt: skip
    (pkg / "model.json").write_text(json.dumps(doc))
    assert file_to_fuse(pkg, "openvino") == (None, "openvino runs model.xml (openvino-ir)")
    # OpenCV (the last-resort back end) and onnxruntime still pick the ONNX file.
    assert file_to_fuse(pkg, "opencv") == ("model.onnx", "")


def test_a_package_that_does_not_load_is_not_fused(recipes: Path, tmp_path: Path) -> None:
    loaded = load_recipe(recipes / "plain.toml")
    fake = tmp_path / "fake"  # like test_build.py's packages: model.json without most fields
    fake.mkdir()
    (fake / "model.json").write_text(json.dumps({"format": 1, "name": "fake", "version": "1"}))
    (fake / "model.onnx").write_bytes(b"\0" * 1024)
    model = fused_package(loaded, "primary", fake, tmp_path / "cache", "onnxruntime")
    assert model.path == fake
    # No path in what the manifest records: the reason is in the build log.
    assert model.summary == {
        "skipped": "no onnxruntime model file in the package (see the build log)"
    }


def test_a_fused_file_that_disagrees_fails_the_build(
    recipes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = model_fuse.fuse_onnx

    def wrong(data: bytes, *args: Any) -> bytes:
        """A real fuse with the scale constant doubled: a valid graph that gives wrong scores."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load_from_string(real(data, *args))
        for init in model.graph.initializer:
            if init.name == model_fuse.PREFIX + "a":
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
        return bytes(model.SerializeToString())

    monkeypatch.setattr(model_fuse, "fuse_onnx", wrong)
    before = {p.name: sha(p) for p in (recipes / "models" / "inspect-primary").iterdir()}
    cache = tmp_path / "cache"
    with pytest.raises(FuseStepError) as exc:
        run_slot(recipes / "plain.toml", cache, tmp_path / "out")
    msg = str(exc.value)
    assert msg.startswith(f"{recipes / 'plain.toml'}: models.fuse: the primary package cannot")
    assert "reference image 0" in msg and "set models.fuse = false" in msg
    assert list((cache / KIND).iterdir()) == []  # nothing half-made is left
    assert not (cache / "slot").exists()
    assert {p.name: sha(p) for p in (recipes / "models" / "inspect-primary").iterdir()} == before


def test_the_key_follows_package_and_file(recipes: Path, tmp_path: Path) -> None:
    pkg = recipes / "models" / "inspect-primary"
    key = fuse_key(pkg, "model.onnx", "onnxruntime")
    assert fuse_key(pkg, "model.onnx", "onnxruntime") == key
    assert fuse_key(pkg, "model.onnx", "openvino") != key  # also checked on OpenVINO
    changed = Path(shutil.copytree(pkg, tmp_path / "changed"))
    with np.load(changed / "reference.npz") as npz:
        images, labels = npz["images"], npz["labels"]
    np.savez_compressed(changed / "reference.npz", images=images[::-1], labels=labels[::-1])
    assert fuse_key(changed, "model.onnx", "onnxruntime") != key
