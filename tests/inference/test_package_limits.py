"""Model-package hardening (issue #17) and validation (issue #18): bounds, digests, path bytes,
labels against the model's outputs, histogram keys. The labels tests run on a generated
MobileNetV2-style 120-class package (tests/models/mobilenet_like.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import ApplianceError
from appliance.inference import package as package_module
from appliance.inference.backends import get_backend
from appliance.inference.errors import DigestMismatchError, PackageError, ShapeMismatchError
from appliance.inference.package import load_package, parse_manifest
from appliance.inference.package_check import MAX_MODEL_FILE_BYTES
from appliance.inference.selftest import run_selftest
from tests.inference.fixtures import manifest
from tests.models.mobilenet_like import make_mobilenet_package

SHA = "0" * 64
GOOD = manifest([{"path": "model.onnx", "format": "onnx", "precision": "fp32", "sha256": SHA}])
WHERE = Path("pkg/model.json")


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mobilenet_package(tmp_path_factory.mktemp("mn") / "mobilenet-like", count=16)


def _copy(src: Path, dst: Path, **changes: object) -> Path:
    pkg = Path(shutil.copytree(src, dst))
    data = json.loads((pkg / "model.json").read_text())
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    (pkg / "model.json").write_text(json.dumps(data))
    return pkg


def _doc(**changes: object) -> bytes:
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return json.dumps(data).encode()


# --- labels against the model's outputs (checked when a file loads) --------------------------


@pytest.mark.parametrize("count", [3, 100, 1000])
def test_labels_must_match_the_output_size(mobilenet: Path, tmp_path: Path, count: int) -> None:
    labels = [f"c{i}" for i in range(count)]
    pkg = _copy(mobilenet, tmp_path / "p", labels=labels)
    with pytest.raises(ShapeMismatchError) as exc:
        get_backend("onnxruntime").load(load_package(pkg))
    msg = str(exc.value)
    assert f"labels: {count} labels" in msg and "[1, 120], 120 classes" in msg
    # The device's self-test (and the TUI that runs it) reports it as a named error.
    with pytest.raises(ApplianceError, match="one label per output class"):
        run_selftest(pkg, "onnxruntime")


def test_matching_labels_load(mobilenet: Path) -> None:
    model = get_backend("onnxruntime").load(load_package(mobilenet))
    assert len(model.package.manifest.labels) == 120
    model.close()


# --- reference.histogram -----------------------------------------------------------------------


def test_unknown_histogram_keys_are_refused() -> None:
    with pytest.raises(PackageError, match=r"reference\.histogram: keys \['cat'\] are not labels"):
        parse_manifest(_doc(reference__histogram={"cat": 0.5}), WHERE)
    with pytest.raises(PackageError, match=r"reference\.histogram: .*must be in \[0, 1\]"):
        label = GOOD["labels"][0]
        parse_manifest(_doc(reference__histogram={label: 1.5}), WHERE)


# --- bounds --------------------------------------------------------------------------------------

BOUNDS = [
    ({"input__shape": [1, 3, 5000, 96]}, "input.shape: [1, 3, 5000, 96]: batch at most"),
    ({"input__shape": [64, 3, 96, 96]}, "batch at most 16"),
    ({"input__shape": [16, 3, 4096, 4096]}, "more than 16777216 values"),
    ({"reference__count": 10**9}, "reference.count: must be 1..100000"),
    ({"calibration": {"split": "c.npz", "count": 0}}, "calibration.count: must be 1..100000"),
    ({"files": [GOOD["files"][0]] * 65}, "files: 65 entries; at most 64"),
    ({"labels": ["x"] * 100_001}, "labels: 100001 labels; at most 100000"),
]


@pytest.mark.parametrize(("changes", "needle"), BOUNDS, ids=[n for _, n in BOUNDS])
def test_sizes_beyond_the_bounds_are_refused(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(PackageError) as exc:
        parse_manifest(_doc(**changes), WHERE)
    assert needle in str(exc.value)


def test_a_model_file_beyond_the_size_limit_is_refused_before_it_is_read(
    mobilenet: Path, tmp_path: Path
) -> None:
    pkg = Path(shutil.copytree(mobilenet, tmp_path / "p"))
    with open(pkg / "model.onnx", "r+b") as f:  # sparse: no disk, no memory
        f.truncate(MAX_MODEL_FILE_BYTES + 1)
    p = load_package(pkg)
    with pytest.raises(PackageError, match=r"bytes; the limit for a package file"):
        p.read_verified(p.manifest.files[0])


def test_a_split_that_inflates_beyond_the_limit_is_refused(
    mobilenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound is checked from the zip directory before numpy inflates anything; a small
    # limit stands in for the 1 GiB one so the test need not write a gigabyte.
    monkeypatch.setattr(package_module, "MAX_SPLIT_BYTES", 1000)
    pkg = _copy(mobilenet, tmp_path / "p", reference__sha256=None)
    with pytest.raises(PackageError, match=r"uncompressed; the limit is 1000"):
        load_package(pkg).load_reference()


# --- the reference split pinned by digest ----------------------------------------------------


def test_the_reference_split_is_pinned_by_its_digest(mobilenet: Path, tmp_path: Path) -> None:
    images, labels = load_package(mobilenet).load_reference()  # the generator pins it
    assert len(images) == 16
    pkg = Path(shutil.copytree(mobilenet, tmp_path / "p"))
    # Same count, other images: the self-test would pass on a swapped split without the digest.
    np.savez_compressed(pkg / "reference.npz", images=images[::-1].copy(), labels=labels[::-1])
    with pytest.raises(DigestMismatchError, match=r"reference\.npz: sha256 is .*reference\.sha256"):
        load_package(pkg).load_reference()
    with pytest.raises(PackageError, match=r"reference\.sha256: expected 64 lowercase hex"):
        parse_manifest(_doc(reference__sha256="abc"), WHERE)


# --- NUL and other invalid path bytes ------------------------------------------------------------

PATHS = [
    ({"files__0__path": "model\x00.onnx"}, "files[0].path: 'model\\x00.onnx' contains the control"),
    ({"reference__split": "ref\x00.npz"}, "reference.split: 'ref\\x00.npz' contains the control"),
    ({"calibration": {"split": "c\n.npz", "count": 4}}, "calibration.split: 'c\\n.npz' contains"),
    ({"files__0__path": "model\ud800.onnx"}, "surrogate"),  # refused by the JSON decoder
    ({"calibration": {"split": "../c.npz", "count": 4}}, "calibration.split: '../c.npz' must be"),
]


@pytest.mark.parametrize(("changes", "needle"), PATHS, ids=[n for _, n in PATHS])
def test_invalid_path_bytes_are_refused_by_field(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(PackageError) as exc:
        parse_manifest(_doc(**changes), WHERE)
    assert str(exc.value).startswith(f"{WHERE}: ") and needle in str(exc.value)


def test_a_nul_in_a_file_name_is_a_named_error_not_a_crash(mobilenet: Path, tmp_path: Path) -> None:
    """The TUI's model-check worker catches ApplianceError; a ValueError killed it."""
    pkg = _copy(mobilenet, tmp_path / "p", files__0__path="model\x00.onnx")
    with pytest.raises(PackageError, match="NUL or another byte"):
        run_selftest(pkg, "onnxruntime")
    with pytest.raises(PackageError, match="cannot contain a NUL byte"):
        run_selftest(Path(f"{pkg}\x00x"), "onnxruntime")


path_text = st.text(
    st.characters(codec=None, exclude_categories=()), max_size=12
)  # any code point, surrogates and NUL included


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["files__0__path", "reference__split", "files__0__fused"]),
    path_text,
)
def test_any_path_text_is_refused_or_safe(field: str, value: str) -> None:
    doc = _doc(**{field: {"of": value, "color": "BGR"} if field.endswith("fused") else value})
    try:
        m = parse_manifest(doc, WHERE)
    except PackageError as exc:
        assert str(exc).startswith(f"{WHERE}: ")
        return
    paths = [f.path for f in m.files] + [m.reference.split if m.reference else ""]
    for p in paths:
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in p)  # NUL, newline, ...
        assert "\x00" not in p and not p.startswith("/") and ".." not in p.split("/")
        p.encode("utf-8")  # never a lone surrogate
        os.fsencode(p)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.floats(allow_nan=True), max_size=5))
def test_any_histogram_is_refused_or_only_holds_labels(hist: dict[str, float]) -> None:
    with contextlib.suppress(PackageError):
        m = parse_manifest(_doc(reference__histogram=hist), WHERE)
        assert m.reference is not None
        assert set(m.reference.histogram) <= set(m.labels)
        assert all(0.0 <= v <= 1.0 for v in m.reference.histogram.values())


def test_digest_of_the_generated_split_is_what_the_manifest_says(mobilenet: Path) -> None:
    ref = load_package(mobilenet).manifest.reference
    assert ref is not None and ref.sha256 is not None
    assert ref.sha256 == hashlib.sha256((mobilenet / ref.split).read_bytes()).hexdigest()
