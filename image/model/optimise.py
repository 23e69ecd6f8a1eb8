"""``kiln model optimise``: build a target runtime's precision variants, gate them, pick one.

For each candidate (FP32, the runtime's reduced-precision execution hint, INT8) the reference
split runs on the target's own runtime; a candidate passes the gate when its top-1 is at most
``max_accuracy_drop`` below the FP32 parent's on the same runtime in the same run. The fastest
passing candidate (p50 of infer) that the device will really run is shipped (OpenVINO rows with
the CPU's default hint, bf16 here, are measured but not shippable: the device's back end sets
f32); the whole table goes to ``optimisation.json`` in the output package (model.json keeps format
v1; its ``provenance.optimisation`` points there).

Variants: onnxruntime and OpenVINO get ORT ``quantize_static`` QDQ per-channel INT8 with int8
(S8S8) and uint8 (U8S8) activations; OpenVINO adds a 7-bit QDQ file, FP16 IR and NNCF INT8
IR, plain and 7-bit (accuracy control when they fail); LiteRT passes through (passthrough.py);
TensorRT ships symmetric QDQ (zero-point 0, what its explicit quantisation accepts; the last
layer in float when that fails the gate) + FP32 + a calibration cache, gated on onnxruntime as a
proxy (tensorrt_rows.py, tensorrt.py); ``fp16`` lets the device's engine run float layers in FP16.
A variant that cannot be built, loaded or run on this CPU is a row with its ``error``
(variants.py), never the end of the run; a selected file that a fallback back end of the target
cannot load ships with the FP32 parent beside it.

OpenVINO picks its INT8 kernels per instruction set: with oneDNN capped at AVX2 (the path of a
CPU without VNNI) the 8-bit QDQ files of the reference fallback model lost 19 pp (int16
saturation of u8 x s8 products). So OpenVINO's INT8 rows are gated on the host and again under
that cap (openvino_rows.py, isa.py; docs/decisions.md §30). onnxruntime's MLAS picks its INT8
kernels by CPUID with no switch: for onnxruntime targets (not TensorRT's proxy) a 7-bit QDQ file
is built too, and every INT8 row is evaluated again under ``qemu-x86_64-static -cpu Haswell``
(8-bit QDQ of the fallback model: 82.42 % there vs 95.70 % on an AVX-512 VNNI host).
``weakest_isa_gate=False`` (``--skip-weakest-isa-gate``) measures on the host only and records
that in the table's notes.

If no INT8 candidate passes, the step fails (``GateError``, every INT8 row's figure or reason in
the message) unless ``allow_fallback`` is set: an INT8 build that silently ships worse accuracy
is what this exists to prevent (Ultralytics-style exports ship a collapsed INT8 model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from appliance.inference.package import ModelFile, ModelPackage, load_package
from image.errors import BuildError
from image.model.isa import gate_on_weakest_isa, worst_drop_pp
from image.model.openvino_rows import gate_openvino, openvino_rows, passes_gate
from image.model.passthrough import passthrough_litert
from image.model.quantise import quantise_onnx_int8
from image.model.table import (
    TABLE_FILE,
    Optimisation,
    Variant,
    replace_tree,
    result_from_json,
)
from image.model.variants import (
    Scratch,
    int8_u8s7_row,
    measured,
    pin_splits,
)
from image.model.variants import entry as _entry
from image.model.variants import write_manifest as _write_manifest

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 0.01
SELECT_CHOICES = ("fastest", "int8", "smallest", "fp32")
INT8_ONNX = "model_int8.onnx"
INT8_U8_ONNX = "model_int8_u8.onnx"
# Bump when the recipe of a variant changes, so cached outputs are rebuilt.
# 2: IR entries carry weights_sha256; 3: gate under AVX2, 7-bit NNCF; 4: onnxruntime too;
# 5: TensorRT rows are symmetric QDQ, ONNX entries carry allow_fp16
RECIPE_VERSION = "5"
TARGET_RUNTIMES = {
    "onnxruntime": "onnxruntime",
    "generic-x86-64": "onnxruntime",
    "openvino": "openvino",
    "intel-openvino": "openvino",
    "litert": "litert",
    "coral-usb-arm64": "litert",
    "coral-devboard": "litert",
    "tensorrt": "tensorrt",
    "jetson-orin": "tensorrt",
}


class GateError(BuildError):
    """No INT8 variant kept its accuracy within ``max_accuracy_drop`` of the FP32 parent."""

    exit_code = 3


class UnsupportedTargetError(BuildError):
    """The target's runtime cannot be optimised on this build host (says what is missing)."""


def runtime_of(target: str) -> str:
    """The inference runtime of a target name, recipe target or runtime name."""
    if target not in TARGET_RUNTIMES:
        raise UnsupportedTargetError(
            f"target {target!r}: unknown; choose one of {', '.join(sorted(TARGET_RUNTIMES))}"
        )
    return TARGET_RUNTIMES[target]


def cache_key(package: ModelPackage, target: str, options: dict[str, Any]) -> str:
    """Content hash of everything the output depends on (files, manifest, options, recipe)."""
    h = hashlib.sha256()
    h.update(package.manifest_path.read_bytes())
    for f in sorted(package.root.rglob("*")):
        if f.is_file() and f.name != "model.json":
            h.update(f.relative_to(package.root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    h.update(json.dumps([target, options, RECIPE_VERSION], sort_keys=True).encode())
    return h.hexdigest()


def optimise(
    package_dir: Path | str,
    target: str,
    out: Path,
    *,
    max_accuracy_drop: float = DEFAULT_MAX_DROP,
    threads: int = 1,
    calibration: Path | None = None,
    allow_fallback: bool = False,
    cache_dir: Path | None = None,
    timing_rounds: int = 2,
    select: str = "fastest",
    weakest_isa_gate: bool = True,
    fp16: bool = True,
    fallback_backends: tuple[str, ...] = (),
) -> Optimisation:
    """Build, gate and select; write the output package to ``out`` (replaced if it exists).

    ``select``: ``fastest`` ships the fastest passing variant; ``int8`` ships the fastest passing
    INT8 variant even if a float one runs faster; ``smallest`` ships the passing variant with the
    fewest bytes (e.g. for cellular updates; unlike ``fastest`` it does not depend on timing
    noise); ``fp32`` ships the FP32 parent with the table (a failing INT8 gate is then recorded,
    not raised). ``weakest_isa_gate=False`` skips the onnxruntime INT8 rows' evaluation under
    qemu-user's AVX2-only CPU (slow for big models, or no qemu-user here); the table says so.
    ``fp16`` (TensorRT targets): the shipped ONNX files say ``allow_fp16``, so the device's
    engine builder sets ``BuilderFlag.FP16`` (layers outside the Q/DQ pairs may run in FP16).
    ``fallback_backends``: the other back ends the target's frozen runtime carries (the image
    builder passes its recipe's, e.g. ``("opencv",)`` with ``[runtime] extras = ["opencv"]``);
    when one of them cannot load the selected file, the FP32 parent ships beside it. Without
    any, only files the target's own back end reads ship.
    """
    if select not in SELECT_CHOICES:
        raise BuildError(f"select: {select!r} is not one of {', '.join(SELECT_CHOICES)}")
    package = load_package(package_dir)
    runtime = runtime_of(target)
    options = {
        "max_accuracy_drop": max_accuracy_drop,
        "threads": threads,
        "allow_fallback": allow_fallback,
        "select": select,
        "weakest_isa_gate": weakest_isa_gate,
        "fp16": fp16,
        "fallback_backends": sorted(fallback_backends),
        "calibration": hashlib.sha256(calibration.read_bytes()).hexdigest() if calibration else "",
    }
    key = cache_key(package, target, options)
    if cache_dir is not None and (cache_dir / key / TABLE_FILE).exists():
        replace_tree(cache_dir / key, out)
        result = result_from_json(json.loads((out / TABLE_FILE).read_text()))
        result.cached, result.output = True, str(out)
        return result

    if runtime in ("litert",):
        result = passthrough_litert(package, target, out)
    else:
        # No TensorRT here: gate on onnxruntime as a proxy, ship INT8 QDQ + FP32 + cache.
        trt = runtime == "tensorrt"
        with tempfile.TemporaryDirectory(prefix="kiln-opt-") as tmp:
            result = _optimise_onnx(
                package,
                target,
                "onnxruntime" if trt else runtime,
                Path(tmp),
                out,
                max_accuracy_drop=max_accuracy_drop,
                threads=threads,
                calibration=calibration,
                allow_fallback=allow_fallback,
                timing_rounds=timing_rounds,
                # TensorRT ships INT8 unless the FP32 parent is asked for.
                select=("fp32" if select == "fp32" else "int8") if trt else select,
                # TensorRT has its own INT8 kernels: onnxruntime's CPU ones are only its proxy.
                weakest_isa_gate=weakest_isa_gate and not trt,
                fallback_backends=tuple(b for b in fallback_backends if b != runtime),
            )
        if trt:
            _add_tensorrt_files(package, out, result, calibration, fp16)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        replace_tree(out, cache_dir / key)
    return result


def _optimise_onnx(
    package: ModelPackage,
    target: str,
    runtime: str,
    work: Path,
    out: Path,
    *,
    max_accuracy_drop: float,
    threads: int,
    calibration: Path | None,
    allow_fallback: bool,
    timing_rounds: int,
    select: str,
    weakest_isa_gate: bool = False,
    fallback_backends: tuple[str, ...] = (),
) -> Optimisation:
    fp32 = package.select_file(("onnx",))
    if fp32.precision != "fp32":
        raise BuildError(
            f"{package.manifest_path}: files: the first ONNX file {fp32.path!r} is "
            f"{fp32.precision}, not fp32; optimise the FP32 parent package instead"
        )
    # Variants are built inside a scratch copy of the package, so the device code (which only
    # loads files listed in a verified model.json) evaluates them unchanged.
    sc = Scratch(package, work / "pkg", runtime, threads, timing_rounds)
    trt = runtime_of(target) == "tensorrt"
    listed = _listed_files(package, fp32.path)
    _add_files(sc, package, fp32.path, listed, calibration, trt)
    parent = sc.run(fp32.path, True)  # nothing can be gated without it: its error propagates
    labels = sc.labels
    res = Optimisation(
        package=str(package.root),
        target=target,
        runtime=runtime,
        threads=threads,
        max_accuracy_drop=max_accuracy_drop,
        parent_top1=parent.top1,
        images=len(labels),
    )
    top = parent.top1
    res.variants.append(measured(parent, "fp32", "fp32", "f32", top))
    if trt:
        from image.model.tensorrt_rows import tensorrt_rows

        res.variants += tensorrt_rows(sc, fp32.path, calibration, top, max_accuracy_drop)
    else:
        res.variants.append(sc.row("int8", INT8_ONNX, "int8", "f32", top))
        res.variants.append(sc.row("int8-u8s8", INT8_U8_ONNX, "int8", "f32", top))
    if runtime == "openvino":
        openvino_rows(res, sc, fp32.path, INT8_U8_ONNX, calibration)
    elif runtime_of(target) == "onnxruntime":  # not TensorRT's proxy: its kernels are its own
        res.variants.append(int8_u8s7_row(sc, fp32.path, calibration, top))
        if not weakest_isa_gate:
            res.notes.append(
                "weakest-ISA gate NOT run (--skip-weakest-isa-gate): INT8 rows were measured on "
                "this host's CPU only; 8-bit QDQ files can lose accuracy on a CPU without VNNI"
            )
    # Files the package already lists (e.g. the owner's own quantisation-aware INT8 file) compete.
    res.variants += [sc.row(f"listed:{f.path}", f.path, f.precision, "f32", top) for f in listed]
    spkg = sc.package
    if runtime == "openvino":  # docs/decisions.md §30: INT8 gates on the target's weakest ISA
        gate_openvino(res, sc, fp32.path, threads, calibration)
    elif runtime_of(target) == "onnxruntime" and weakest_isa_gate:  # qemu-user, AVX2 only
        gate_on_weakest_isa(res, sc.root, fp32.path, threads)
    for v in res.variants:
        v.passed = passes_gate(v, max_accuracy_drop)
    int8_ok = [v for v in res.variants if v.precision == "int8" and v.passed]
    if not int8_ok and not allow_fallback and select != "fp32":
        raise GateError(_gate_message(package, res, len(labels)))
    passing = [v for v in res.variants if v.passed]
    if select == "int8" and int8_ok:
        passing = int8_ok
    # Only what the device will run can be shipped: its openvino back end always sets the f32
    # hint (model.json cannot ask for the CPU's default, bf16 here), so default-hint rows are
    # measured for the record but not selectable.
    shippable = [v for v in passing if v.hint != "default"] or passing
    best = _choose(shippable, select, res)
    fastest = min(passing, key=lambda v: v.p50_ms)
    if select == "fastest" and fastest.hint == "default" and fastest is not best:
        res.notes.append(
            f"{fastest.name} was fastest (p50 {fastest.p50_ms:.3f} ms vs {best.p50_ms:.3f} ms) "
            "but needs OpenVINO's default precision hint, which the device's back end does not "
            "use; not shipped"
        )
    res.selected = best.name
    res.speedup = res.variant("fp32").p50_ms / best.p50_ms if best.p50_ms else 1.0
    res.size_ratio = res.variant("fp32").size_bytes / best.size_bytes if best.size_bytes else 1.0
    keep_fp32 = _fallback_notes(sc, best, fp32.path, fallback_backends, res)
    _write_output(spkg, package, best, res, out, fp32.path if keep_fp32 else None)
    return res


def _add_files(
    sc: Scratch,
    package: ModelPackage,
    fp32: str,
    listed: list[ModelFile],
    calibration: Path | None,
    trt: bool,
) -> None:
    """FP32, the package's own files, and (not for TensorRT) the S8S8 and U8S8 QDQ files."""
    if not trt:  # TensorRT takes only symmetric QDQ: tensorrt_rows builds its own
        quantise_onnx_int8(package, sc.root / INT8_ONNX, source=fp32, calibration=calibration)
        quantise_onnx_int8(
            package,
            sc.root / INT8_U8_ONNX,
            source=fp32,
            calibration=calibration,
            unsigned_activations=True,
        )
    sc.add(fp32, "fp32")
    for f in listed:
        sc.add(f.path, f.precision)
    if not trt:
        sc.add(INT8_ONNX, "int8")
        sc.add(INT8_U8_ONNX, "int8")


def _fallback_notes(
    sc: Scratch, best: Variant, fp32: str, runtimes: tuple[str, ...], res: Optimisation
) -> bool:
    """True when a fallback back end of the target cannot load ``best``: ship FP32 beside it."""
    if best.file == fp32:
        return False
    fails = sc.fallback_failures(best.file, runtimes)
    for rt, why in fails.items():
        res.notes.append(
            f"{best.file} does not load on {rt}, a fallback back end of {res.target} ({why}); "
            f"{fp32} ships beside it for that back end"
        )
    return bool(fails)


def _listed_files(package: ModelPackage, parent: str) -> list[ModelFile]:
    """The package's other plain ONNX / OpenVINO IR files: measured as candidates too."""
    return [
        f
        for f in package.manifest.files
        if f.path != parent and f.fused is None and f.format in ("onnx", "openvino-ir")
    ]


def _gate_message(package: ModelPackage, res: Optimisation, images: int) -> str:
    """No INT8 variant passed: every INT8 row and why it did not pass."""
    rows = [v for v in res.variants if v.precision == "int8"]
    why = "; ".join(
        f"{v.name}: {v.error}"
        if v.error
        else f"{v.name}: top-1 {v.top1:.4f}, {v.drop_pp:.2f} pp drop{_isa_drops(v)}"
        for v in rows
    )
    measured_rows = [v for v in rows if not v.error]
    head = f"{package.root}: INT8 on {res.runtime} fails the accuracy gate"
    if measured_rows:
        best = min(measured_rows, key=lambda v: worst_drop_pp(v.drop_pp, v.drop_pp_isa))
        worst = worst_drop_pp(best.drop_pp, best.drop_pp_isa)
        head += (
            f": best INT8 variant {best.name} top-1 {best.top1:.4f} vs FP32 "
            f"{res.parent_top1:.4f} on the same runtime ({worst:.2f} pp drop{_isa_drops(best)} > "
            f"{res.max_accuracy_drop * 100:.2f} pp allowed, {images} reference images)"
        )
    else:
        head += ": no INT8 variant could be loaded"
    return (
        f"{head}. Every INT8 row: {why}. Check the calibration split (it must look like real "
        "frames), or pass --allow-fallback to ship the best passing non-INT8 variant"
    )


def _isa_drops(v: Variant) -> str:
    """`` (avx2: 19.14 pp)``: the row's drop under each capped instruction set, if measured."""
    extra = {k: d for k, d in v.drop_pp_isa.items() if k != "host"}
    return f" (host; {', '.join(f'{k}: {d:.2f} pp' for k, d in extra.items())})" if extra else ""


def _choose(shippable: list[Variant], select: str, res: Optimisation) -> Variant:
    """The variant to ship among the passing, shippable ones."""
    if select == "fp32":
        return res.variant("fp32")
    if select == "smallest":
        # Ties (S8S8 and U8S8 files are the same size) go to the earlier row, not to timing
        # noise: the same inputs then ship the same file.
        return min(shippable, key=lambda v: v.size_bytes)
    return min(shippable, key=lambda v: v.p50_ms)


def _add_tensorrt_files(
    package: ModelPackage, out: Path, res: Optimisation, calibration: Path | None, fp16: bool
) -> None:
    """Add the FP32 ONNX (second: the device falls back to it) and a TensorRT calibration cache.

    Every INT8 file shipped is checked once more as TensorRT needs it (symmetric int8 Q/DQ);
    with ``fp16`` every ONNX entry says ``allow_fp16`` (the engine's FP16 builder flag).
    """
    from image.model.tensorrt import (
        CACHE_FILE,
        calibration_cache,
        calibration_ranges,
        check_tensorrt_qdq,
    )

    fp32 = package.select_file(("onnx",))
    (out / CACHE_FILE).write_bytes(calibration_cache(calibration_ranges(package, calibration)))
    data = json.loads((out / "model.json").read_text())
    if not any(f["path"] == fp32.path for f in data["files"]):
        shutil.copy2(package.path_of(fp32), out / fp32.path)
        data["files"].append(_entry(out, fp32.path, "fp32"))
    for f in data["files"]:
        if f["format"] == "onnx" and f["precision"] == "int8":
            check_tensorrt_qdq((out / f["path"]).read_bytes(), str(out / f["path"]))
        if f["format"] == "onnx" and fp16:
            f["allow_fp16"] = True
    (out / "model.json").write_text(json.dumps(data, indent=2) + "\n")
    res.runtime = "tensorrt"
    res.notes.append(
        "TensorRT is not on this build host: accuracy and latency were measured on onnxruntime "
        "(CPU) as a proxy; the device re-measures at its first engine build. The INT8 file is "
        "symmetric QDQ (zero-point 0, int8; TensorRT explicit INT8: the device sets "
        f"BuilderFlag.INT8{' and FP16' if fp16 else ''}); {CACHE_FILE} is for "
        "TensorRT 8.x implicit INT8 calibration"
    )
    (out / TABLE_FILE).write_text(json.dumps(res.to_json(), indent=2) + "\n")
    load_package(out)


def _write_output(
    spkg: ModelPackage,
    parent: ModelPackage,
    best: Variant,
    res: Optimisation,
    out: Path,
    second: str | None = None,
) -> None:
    """The selected file (+ ``second``, the FP32 parent for a fallback back end) + the splits +
    model.json + optimisation.json, swapped in at once."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes 0700; a package is read by the device's service user
    try:
        for p in parent.root.iterdir():  # splits and anything else that is not a model file
            listed = {f.path for f in parent.manifest.files}
            if p.is_file() and p.name not in listed and p.name not in ("model.json", TABLE_FILE):
                shutil.copy2(p, tmp / p.name)
        shutil.copy2(spkg.root / best.file, tmp / best.file)
        if best.file.endswith(".xml"):  # an IR's weights (model.json's weights_sha256)
            bin_name = best.file[: -len(".xml")] + ".bin"
            shutil.copy2(spkg.root / bin_name, tmp / bin_name)
        res.output = str(out)
        # The device's self-test expects the weakest ISA's figure (it may run on that CPU).
        top1 = min([best.top1, *best.top1_isa.values()]) if best.precision != "fp32" else None
        files = [_entry(tmp, best.file, best.precision, top1)]
        if second is not None:
            shutil.copy2(spkg.root / second, tmp / second)
            files.append(_entry(tmp, second, "fp32"))
        _write_manifest(
            tmp,
            parent,
            files,
            {"optimisation": {"table": TABLE_FILE, "target": res.target, "selected": best.name}},
        )
        pin_splits(tmp)
        (tmp / TABLE_FILE).write_text(json.dumps(res.to_json(), indent=2) + "\n")
        load_package(tmp)  # the output must be a valid package before it replaces anything
        replace_tree(tmp, out, move=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
