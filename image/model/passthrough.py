"""LiteRT / Edge TPU targets: ship the package's .tflite files byte-for-byte, say what is missing.

An already-quantised .tflite (``model_int8.tflite``, a third-party INT8 model) is never
re-quantised: the builder has no FP32 graph of it, and quantising twice only loses accuracy.
Converting an FP32 .tflite to full INT8 needs TensorFlow's converter on the build host, and an
Edge TPU file needs ``edgetpu_compiler``; when either is absent the package passes through
unchanged and the notes say exactly which tool is missing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from appliance.inference.package import ModelPackage, load_package
from image.model.eval import evaluate
from image.model.table import TABLE_FILE, Optimisation, Variant, replace_tree


def missing_tools(package: ModelPackage) -> list[str]:
    """What this host lacks to produce a full-INT8 and an Edge TPU file for ``package``."""
    files = package.manifest.files
    notes = []
    has_int8 = any(f.format == "tflite" and f.precision in ("int8", "uint8") for f in files)
    has_fp32 = any(f.format == "tflite" and f.precision == "fp32" for f in files)
    if not has_int8 and has_fp32 and importlib.util.find_spec("tensorflow") is None:
        notes.append(
            "no full-INT8 .tflite made: the TFLite converter (pip package tensorflow-cpu) is not "
            "installed on this build host; the FP32 .tflite ships unchanged"
        )
    if (
        not any(f.format == "edgetpu-tflite" for f in files)
        and shutil.which("edgetpu_compiler") is None
    ):
        notes.append(
            "no _edgetpu.tflite: edgetpu_compiler is needed to make it and is not on PATH "
            "(Coral's Debian package edgetpu-compiler, x86-64 only); the device runs the CPU "
            ".tflite. Compile model_int8.tflite elsewhere and add it with `kiln model edgetpu "
            "PKG --compiled model_int8_edgetpu.tflite`"
        )
    elif not any(f.format == "edgetpu-tflite" for f in files):
        notes.append("edgetpu_compiler is on PATH: `kiln model edgetpu PKG` adds the Edge TPU file")
    return notes


def passthrough_litert(package: ModelPackage, target: str, out: Path) -> Optimisation:
    """Copy the package unchanged (plus optimisation.json) and measure its .tflite files."""
    res = Optimisation(
        package=str(package.root),
        target=target,
        runtime="litert",
        threads=1,
        max_accuracy_drop=0.0,
        parent_top1=0.0,
        images=0,
    )
    res.notes = missing_tools(package)
    tflites = [f for f in package.manifest.files if f.format == "tflite"]
    if package.manifest.task == "classification" and package.manifest.reference and tflites:
        images, labels = package.load_reference()
        res.images = len(labels)
        for f in tflites:
            ev = evaluate(package, "litert", file=f.path, images=images, labels=labels)
            res.variants.append(
                Variant(
                    name=f"{f.precision}-tflite",
                    file=f.path,
                    precision=f.precision,
                    hint="-",
                    top1=ev.top1,
                    p50_ms=ev.p50_ms,
                    p95_ms=ev.p95_ms,
                    size_bytes=ev.size_bytes,
                    passed=True,
                    device=ev.device,
                    note="shipped unchanged",
                )
            )
    elif tflites:
        res.notes.append("no classification reference split: the files were not evaluated")
    res.selected = tflites[0].path if tflites else ""
    edgetpu = [f for f in package.manifest.files if f.format == "edgetpu-tflite"]
    if edgetpu:  # the device runs it when the Edge TPU delegate loads (backends/litert.py)
        res.selected = edgetpu[0].path
        res.notes.append(
            f"{edgetpu[0].path} runs when the Edge TPU delegate loads, "
            f"{res.selected if not tflites else tflites[0].path} on the CPU otherwise"
        )
    res.output = str(out.resolve())
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    try:
        shutil.copytree(package.root, tmp / "pkg")

        (tmp / "pkg" / TABLE_FILE).write_text(json.dumps(res.to_json(), indent=2) + "\n")
        load_package(tmp / "pkg")
        replace_tree(tmp / "pkg", out, move=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res
