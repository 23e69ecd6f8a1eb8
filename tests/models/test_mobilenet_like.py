"""The model tools on a package the tests generate: MobileNetV2-style, 120 classes (issue #18).

Each test asserts what holds on any x86-64 CPU: a variant a runtime refuses is a reported row,
never the end of the run. A random 120-class net loses a few points under INT8 QDQ, so runs that
must select an INT8 file allow a 10 pp drop (declared here, not hidden in the code).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from appliance.inference.backends import BackendOptions, get_backend
from appliance.inference.chain import Candidate, Event, FallbackChain
from appliance.inference.package import load_package
from appliance.inference.selftest import run_selftest
from image.model.eval import evaluate
from image.model.fuse import fuse_package
from image.model.optimise import optimise
from image.model.quantise import QuantisationError
from tests.timing import NO_LATENCY_GATE

DROP = 0.10
# onnxruntime on a CPU without VNNI (qemu-user Haswell): the 8-bit QDQ files of this net lose
# 77-85 pp, the 7-bit one 11.46 pp on both ISAs; nothing INT8 holds within DROP there, so the
# tests that need onnxruntime to ship INT8 allow the 7-bit file's drop (docs/decisions.md §30).
DROP_ORT_BOTH_ISAS = 0.12


def _with_listed_file(src: Path, dst: Path, name: str, model: onnx.ModelProto) -> Path:
    """A copy of the package that lists ``name`` (an extra candidate) after model.onnx."""
    pkg = Path(shutil.copytree(src, dst))
    data = model.SerializeToString()
    (pkg / name).write_bytes(data)
    m = json.loads((pkg / "model.json").read_text())
    digest = hashlib.sha256(data).hexdigest()
    m["files"].append({"path": name, "format": "onnx", "precision": "fp32", "sha256": digest})
    (pkg / "model.json").write_text(json.dumps(m))
    return pkg


def _inverse_head(src: Path) -> onnx.ModelProto:
    """model.onnx with its logits multiplied by Inverse([[1]]): onnxruntime runs it (contrib op
    com.microsoft.Inverse), OpenVINO's ONNX front end has no conversion for it."""
    model = onnx.load(str(src / "model.onnx"))
    g = model.graph
    g.output[0].name = "logits"
    for n in g.node:
        n.output[:] = ["plain_logits" if o == "logits" else o for o in n.output]
    g.initializer.append(numpy_helper.from_array(np.ones((1, 1), np.float32), "one"))
    g.node.append(helper.make_node("Inverse", ["one"], ["inv"], domain="com.microsoft"))
    g.node.append(helper.make_node("Mul", ["plain_logits", "inv"], ["logits"]))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


@pytest.mark.slow
def test_optimise_intel_openvino_selects_a_file_on_any_cpu(
    mobilenet_pkg: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ov"
    res = optimise(mobilenet_pkg, "intel-openvino", out, max_accuracy_drop=DROP, timing_rounds=1)
    assert res.images == 96 and res.parent_top1 == 1.0
    for v in res.variants:
        assert not (v.error and v.passed), v
        assert bool(v.error) == (v.p50_ms == 0.0), v  # measured, or failed with a reason
        if v.error:
            assert "openvino" in v.error, v
    best = res.variant(res.selected)
    assert best.passed and not best.error and best.hint == "f32"
    assert json.loads((out / "optimisation.json").read_text())["selected"] == best.name
    report = run_selftest(out, "openvino", budget_factor=NO_LATENCY_GATE)
    assert report.passed, report.reasons
    # The output pins its splits by digest (the self-test reads only the split model.json names).
    ref = load_package(out).manifest.reference
    assert ref is not None and ref.sha256 == _sha(out / "reference.npz")
    cal = load_package(out).manifest.calibration
    assert cal is not None and cal.sha256 == _sha(out / "calibration.npz")


def test_a_replaced_calibration_split_is_refused(mobilenet_pkg: Path, tmp_path: Path) -> None:
    pkg = Path(shutil.copytree(mobilenet_pkg, tmp_path / "p"))
    m = json.loads((pkg / "model.json").read_text())
    m["calibration"]["sha256"] = _sha(pkg / "calibration.npz")
    (pkg / "model.json").write_text(json.dumps(m))
    np.savez_compressed(pkg / "calibration.npz", images=np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(QuantisationError, match=r"calibration\.sha256 says"):
        optimise(pkg, "onnxruntime", tmp_path / "out", timing_rounds=1)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_variant_openvino_refuses_is_a_failed_row_and_the_run_goes_on(
    mobilenet_pkg: Path, tmp_path: Path
) -> None:
    pkg = _with_listed_file(
        mobilenet_pkg, tmp_path / "pkg", "model_inverse.onnx", _inverse_head(mobilenet_pkg)
    )
    # A valid model: onnxruntime runs it and agrees with the labels.
    ort_ev = evaluate(load_package(pkg), "onnxruntime", file="model_inverse.onnx")
    assert ort_ev.top1 == 1.0
    res = optimise(pkg, "openvino", tmp_path / "out", max_accuracy_drop=DROP, timing_rounds=1)
    row = res.variant("listed:model_inverse.onnx")
    assert not row.passed and row.p50_ms == 0.0
    assert "model_inverse.onnx on openvino" in row.error and "Inverse" in row.error
    assert res.selected != row.name and res.variant(res.selected).passed
    table = json.loads((tmp_path / "out" / "optimisation.json").read_text())
    assert any(v["name"] == row.name and v["error"] for v in table["variants"])


def test_fuse_accepts_an_int8_package_whose_scores_tie(mobilenet_pkg: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    res = optimise(
        mobilenet_pkg,
        "onnxruntime",
        out,
        select="int8",
        max_accuracy_drop=DROP_ORT_BOTH_ISAS,
        timing_rounds=1,
    )
    assert res.variant(res.selected).precision == "int8"
    (fused,) = fuse_package(out, check=96)
    assert fused.images_checked == 96 and fused.source == res.variant(res.selected).file


def test_generic_target_with_opencv_ships_a_file_every_back_end_of_its_chain_loads(
    mobilenet_pkg: Path, tmp_path: Path
) -> None:
    """A recipe with ``[runtime] extras = ["opencv"]`` (the builder passes its back ends)."""
    pytest.importorskip("cv2")
    out = tmp_path / "generic"
    res = optimise(
        mobilenet_pkg,
        "generic-x86-64",
        out,
        select="int8",
        max_accuracy_drop=DROP_ORT_BOTH_ISAS,
        timing_rounds=1,
        fallback_backends=("opencv",),
    )
    pkg = load_package(out)
    selected = res.variant(res.selected).file
    assert pkg.manifest.files[0].path == selected
    try:
        get_backend("opencv").load(pkg, selected, BackendOptions()).close()
        opencv_loads_int8 = True
    except Exception:
        opencv_loads_int8 = False
    if opencv_loads_int8:
        assert len(pkg.manifest.files) == 1
    else:  # OpenCV 5 cannot load a QDQ file: FP32 ships beside it, and the note says why
        assert [f.path for f in pkg.manifest.files] == [selected, "model.onnx"]
        assert any("opencv" in n and selected in n for n in res.notes), res.notes
    events: list[Event] = []
    chain = FallbackChain([Candidate(out, "opencv")], BackendOptions(), events.append)
    runner = chain.next_runner()
    assert runner is not None, events
    assert runner.model.file.path == (selected if opencv_loads_int8 else "model.onnx")
    if not opencv_loads_int8:
        skip = [e for e in events if e.kind == "fallback"]
        assert skip and f"{selected} does not load on opencv" in skip[0].reason
    assert events[-1].kind == "loaded"
    runner.model.close()
    # onnxruntime, the target's own back end, runs the INT8 file.
    report = run_selftest(out, "onnxruntime", budget_factor=NO_LATENCY_GATE)
    assert report.passed and report.file == selected, report.reasons


def test_selftest_says_what_split_size_makes_the_gate_meaningful(mobilenet_pkg: Path) -> None:
    appliance = str(Path(sys.executable).with_name("appliance"))
    args = ["--model", str(mobilenet_pkg), "--backend", "onnxruntime", "--budget-factor", "1e6"]
    out = subprocess.run(
        [appliance, "selftest", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "note: the reference split has 96 images: 0.5 pp is 0.48 of an image" in out
    assert "at least 200 images" in out and "PASS" in out


def test_the_docs_worked_example_makes_a_package_the_device_accepts(
    mobilenet_pkg: Path, tmp_path: Path
) -> None:
    """Follow MODEL_PACKAGE.md only: its make_package.py script, a float-normalised data set."""
    from tests.models.mobilenet_like import blob_images, normalise

    doc = (Path(__file__).parents[2] / "appliance/inference/MODEL_PACKAGE.md").read_text()
    script = doc.split("<!-- make_package.py -->\n```python\n", 1)[1].split("\n```\n", 1)[0]
    (tmp_path / "make_package.py").write_text(script)
    x = normalise(blob_images(300, 5))  # what a torchvision data loader yields
    sess = ort.InferenceSession(str(mobilenet_pkg / "model.onnx"))
    y = np.array([sess.run(None, {"input": x[i : i + 1]})[0].argmax() for i in range(len(x))])
    np.savez(tmp_path / "data.npz", x=x, y=y)
    labels = load_package(mobilenet_pkg).manifest.labels
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    out = tmp_path / "pkg"
    args = [str(out), str(mobilenet_pkg / "model.onnx"), str(tmp_path / "data.npz")]
    args += [str(tmp_path / "labels.txt"), "200", "64"]
    subprocess.run(
        [sys.executable, str(tmp_path / "make_package.py"), *args],
        check=True,
        timeout=300,
    )
    pkg = load_package(out)
    ref = pkg.manifest.reference
    # Un-normalise, round, clip: the uint8 images give back the model's own labels.
    assert ref is not None and ref.count == 200 and ref.top1 >= 0.99
    report = run_selftest(out, "onnxruntime", budget_factor=NO_LATENCY_GATE)
    assert report.passed and not report.notes, (report.reasons, report.notes)
