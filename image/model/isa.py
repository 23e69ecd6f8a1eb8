"""The INT8 accuracy gate on the weakest instruction set of the target, in a fresh process.

OpenVINO's CPU plugin picks its INT8 kernels per instruction set. Without VNNI (AVX-512 VNNI or
AVX-VNNI) a u8 x s8 multiply-add goes through ``vpmaddubsw``, which saturates at int16; an INT8
file that keeps its accuracy on a VNNI build host can collapse on an AVX2-only device (a QDQ
file of the reference fallback model lost 19 pp, docs/decisions.md §30). ``kiln model optimise``
therefore evaluates each INT8 candidate again with oneDNN capped at AVX2.

``ONEDNN_MAX_CPU_ISA`` is read once, when oneDNN first dispatches, so the cap runs in a child
process whose environment has it before OpenVINO loads. The child also compiles the FP32 parent
and reads the kernels OpenVINO chose (the runtime model's ``primitiveType``): if any still names
an instruction set above the cap, the cap did not take effect and the gate refuses to guess.

onnxruntime (MLAS) has no such switch: it picks its kernels by CPUID. Its child therefore runs
under ``qemu-x86_64-static -cpu Haswell`` (qemu-user: AVX2 and FMA, no AVX-512, no VNNI), whose
CPUID the runtime reads; the child reads the CPU features numpy detected (by CPUID too) and
refuses if AVX-512 or VNNI is still visible. On the reference fallback model the 8-bit QDQ file
lost 13 pp there (docs/decisions.md §30).

Run as ``python -m image.model.isa PACKAGE_DIR SPEC_JSON`` (what :func:`evaluate_capped` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.errors import BuildError
from image.model.table import Optimisation

# The weakest instruction set the intel-openvino target supports (x86-64 with AVX2).
WEAKEST_ISA = "avx2"
# Kernel names above AVX2: any of them under the cap means the cap was ignored.
_ABOVE_AVX2 = ("avx512", "amx", "vnni")
_TIMEOUT_S = 1800
# onnxruntime's weakest-ISA run: qemu-user with an AVX2-only CPU model (Debian qemu-user-static).
QEMU = "qemu-x86_64-static"
QEMU_CPU = "Haswell"
QEMU_PACKAGE = "qemu-user-static"
# numpy's CPUID-detected features that must be absent under the emulated CPU.
_ABOVE_AVX2_FEATURES = ("AVX512F", "AVX512VNNI", "AVX512_SPR")
# Layers oneDNN runs (the INT8 multiply-adds); the plugin's own JIT kernels (Reduce, Eltwise)
# pick their instruction set without oneDNN's cap and do no integer multiply-adds.
_ONEDNN_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution")


class IsaCapError(BuildError):
    """The capped evaluation could not run, or the instruction-set cap did not take effect."""


@dataclass
class CappedRun:
    """What the child process measured under the cap: top-1 (or error) per (file, hint) key."""

    isa: str
    kernels: list[str]  # the FP32 parent's kernel names under the cap (the proof it took effect)
    top1: dict[str, float]
    errors: dict[str, str]


def key(file: str, hint: str) -> str:
    return f"{file}@{hint}"


def how_capped(runtime: str, isa: str = WEAKEST_ISA) -> str:
    """How the weakest ISA is reached for ``runtime`` (the gate's notes and errors say it)."""
    if runtime == "openvino":
        return f"ONEDNN_MAX_CPU_ISA={isa.upper()}"
    return f"{QEMU} -cpu {QEMU_CPU}"


def launcher(runtime: str) -> list[str]:
    """The command prefix of the child: none for OpenVINO (an env cap), qemu-user otherwise."""
    if runtime == "openvino":
        return []
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise IsaCapError(
            f"{QEMU} is not on PATH: {runtime}'s INT8 gate on the weakest ISA runs the "
            f"evaluation under '{QEMU} -cpu {QEMU_CPU}'; install it (apt-get install "
            f"{QEMU_PACKAGE}), or pass --skip-weakest-isa-gate to measure on this CPU only "
            "(recorded in optimisation.json)"
        )
    return [qemu, "-cpu", QEMU_CPU]


def evaluate_capped(
    root: Path, runtime: str, threads: int, runs: list[tuple[str, str]], isa: str = WEAKEST_ISA
) -> CappedRun:
    """Top-1 of each (file, hint) of the package at ``root`` on the weakest ISA ``isa``.

    OpenVINO: oneDNN capped by the environment; onnxruntime: under qemu-user's Haswell CPU.
    The whole reference split, one pass (no timing rounds: latency is the host's figure).
    """
    spec = json.dumps({"runtime": runtime, "threads": threads, "runs": runs, "isa": isa})
    env = dict(os.environ)
    if runtime == "openvino":
        env["ONEDNN_MAX_CPU_ISA"] = isa.upper()
    cmd = [*launcher(runtime), sys.executable, "-m", "image.model.isa", str(root), spec]
    how = how_capped(runtime, isa)
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IsaCapError(f"{root}: evaluation under {how}: {exc}") from exc
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith(QEMU)]
        raise IsaCapError(
            f"{root}: evaluation under {how} exited {proc.returncode}: {' | '.join(lines[-5:])}"
        )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return CappedRun(isa, data["kernels"], data["top1"], data["errors"])


def gate_on_weakest_isa(res: Optimisation, root: Path, parent_file: str, threads: int) -> None:
    """Fill ``top1_isa``/``drop_pp_isa`` of each measured INT8 row not yet measured under the cap.

    The drop under the cap is against the FP32 parent under the same cap. A row the capped
    runtime cannot run gets a 100 pp drop and a note (it then fails the gate).
    """
    rows = [v for v in res.variants if v.precision == "int8" and not v.error and not v.top1_isa]
    if not rows:
        return
    # Every run under the cap uses the f32 hint: that is the default on an AVX2-only CPU (no
    # bf16), while the capped plugin still reads this CPU's bf16 flag and then fails to load
    # ("object is not initialized"). A file is evaluated once, whatever rows share it.
    runs = list(dict.fromkeys([(parent_file, "f32")] + [(v.file, "f32") for v in rows]))
    t0 = time.perf_counter()
    capped = evaluate_capped(root, res.runtime, threads, runs)
    seconds = time.perf_counter() - t0
    isa = capped.isa
    if key(parent_file, "f32") not in capped.top1:
        raise IsaCapError(
            f"{root}/{parent_file}: the FP32 parent does not run under "
            f"{how_capped(res.runtime, isa)}: {capped.errors.get(key(parent_file, 'f32'))}"
        )
    parent = capped.top1[key(parent_file, "f32")]
    res.parent_top1_isa = {"host": res.parent_top1, isa: parent}
    for v in rows:
        v.top1_isa, v.drop_pp_isa = {"host": v.top1}, {"host": v.drop_pp}
        k = key(v.file, "f32")
        if k in capped.top1:
            v.top1_isa[isa] = capped.top1[k]
            v.drop_pp_isa[isa] = (parent - capped.top1[k]) * 100
        else:
            v.drop_pp_isa[isa] = 100.0
            v.note = f"does not run under {how_capped(res.runtime, isa)}: {capped.errors[k]}"
    what = "its convolutions ran" if res.runtime == "openvino" else "the emulated CPU has"
    res.notes.append(
        f"INT8 rows gated on the host's ISA and under {how_capped(res.runtime, isa)} "
        f"({what} {', '.join(capped.kernels)}; FP32 parent top-1 {parent:.4f}): "
        f"{len(runs)} extra evaluations took {seconds:.1f} s"
    )


def worst_drop_pp(drop_pp: float, drop_pp_isa: dict[str, float]) -> float:
    """The drop the gate judges: the worst over every instruction set measured."""
    return max([drop_pp, *drop_pp_isa.values()])


def _kernels(root: Path) -> list[str]:
    """The kernels OpenVINO's CPU plugin chose for the oneDNN layers of the FP32 ONNX file."""
    import openvino as ov

    from appliance.inference.package import load_package

    pkg = load_package(root)
    f = pkg.select_file(("onnx",))
    core = ov.Core()
    compiled = core.compile_model(
        str(pkg.path_of(f)), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    names = set()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = rt["primitiveType"].astype(str) if "primitiveType" in rt else "undef"
        if rt["layerType"].astype(str) in _ONEDNN_LAYERS and not kind.startswith("undef"):
            names.add(kind)
    return sorted(names)


def _cpu_features() -> list[str]:
    """The x86 features numpy detected by CPUID in this process (under qemu: the emulated CPU)."""
    from numpy._core._multiarray_umath import __cpu_features__

    return sorted(k for k, on in __cpu_features__.items() if on)


def _main(argv: list[str]) -> int:
    from appliance.inference.package import load_package
    from image.model.eval import EvaluationError, evaluate

    root, spec = Path(argv[0]), json.loads(argv[1])
    isa = str(spec["isa"])
    if spec["runtime"] != "openvino":
        features = _cpu_features()
        above = [f for f in _ABOVE_AVX2_FEATURES if f in features]
        if isa == WEAKEST_ISA and (above or "AVX2" not in features):
            print(
                f"this process's CPU is not AVX2-only (CPUID shows {', '.join(above) or 'no AVX2'})"
                f": run it under '{QEMU} -cpu {QEMU_CPU}' (what the optimiser does)",
                file=sys.stderr,
            )
            return 2
        kernels = [f"AVX2, no {', '.join(_ABOVE_AVX2_FEATURES)} (CPUID)"]
    else:
        kernels = _kernels(root)
    if isa == WEAKEST_ISA and spec["runtime"] == "openvino":
        above = [k for k in kernels if any(a in k.lower() for a in _ABOVE_AVX2)]
        if above:
            print(
                f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA')} did not take effect: "
                f"OpenVINO still chose {', '.join(above)}; this OpenVINO build ignores the cap, "
                "so the gate cannot measure the AVX2 path here: use an OpenVINO release whose "
                "CPU plugin honours it (2026.4 does) or build on an AVX2-only host",
                file=sys.stderr,
            )
            return 2
    pkg = load_package(root)
    images, labels = pkg.load_reference()
    top1: dict[str, float] = {}
    errors: dict[str, str] = {}
    for file, hint in spec["runs"]:
        try:
            ev = evaluate(
                pkg,
                spec["runtime"],
                file=file,
                threads=int(spec["threads"]),
                precision_f32=hint != "default",
                images=images,
                labels=labels,
                timing_rounds=1,
            )
            top1[key(file, hint)] = ev.top1
        except EvaluationError as exc:
            errors[key(file, hint)] = str(exc)
    out: dict[str, Any] = {"kernels": kernels, "top1": top1, "errors": errors}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
