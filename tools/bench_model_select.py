"""What a recipe with ``[models] optimise = true`` ships, per target: variant, size and accuracy.

    .venv/bin/python tools/bench_model_select.py [--package DIR ...] [--mobilenet]
        [--targets generic-x86-64,intel-openvino,coral-usb-arm64,jetson-orin]
        [--select fastest,smallest] [--rounds 3] [--json OUT]

For every target, package and ``select`` it runs the builder's own step
(``image.model.optimise.optimise``, as ``image.model.stage`` calls it, gate 1 pp, no cache) and
prints one row: the variant shipped, its precision, its size and top-1 against the FP32 parent
measured on the same runtime in the same run, and its p50 speed-up over FP32. Ratios are
FP32 / shipped (size) and FP32 p50 / shipped p50 (speed). LiteRT rows are the pass-through (no
re-quantisation); TensorRT rows are gated on onnxruntime as a proxy (no TensorRT here).

Packages: the reference packages (recipes/models/inspect-primary, inspect-fallback), copied
privately; ``--mobilenet`` adds tools/bench_models.py's MobileNetV2-shaped network (random
weights: its size and speed are representative, its accuracy is not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from image.model.optimise import GateError, optimise  # noqa: E402

TARGETS = "generic-x86-64,intel-openvino,coral-usb-arm64,jetson-orin"


def row(target: str, name: str, select: str, res: Any, seconds: float) -> dict[str, Any]:
    """One table row out of an optimisation result."""
    chosen = next((v for v in res.variants if res.selected in (v.name, v.file)), None)
    fp32 = next((v for v in res.variants if v.precision == "fp32"), None)
    if res.runtime == "litert":
        # The package passes through whole: compare its INT8 .tflite with its FP32 one.
        chosen = next((v for v in res.variants if v.precision in ("int8", "uint8")), chosen)
    out: dict[str, Any] = {
        "target": target,
        "runtime": res.runtime,
        "package": name,
        "select": select,
        "shipped": "unchanged" if res.runtime == "litert" else res.selected,
        "seconds": round(seconds, 1),
    }
    if chosen is None or fp32 is None:
        out["note"] = "; ".join(res.notes)[:120]
        return out
    out.update(
        precision=chosen.precision,
        size_kb=round(chosen.size_bytes / 1e3, 1),
        fp32_kb=round(fp32.size_bytes / 1e3, 1),
        size_ratio=round(fp32.size_bytes / chosen.size_bytes, 2) if chosen.size_bytes else None,
        top1=round(chosen.top1 * 100, 2),
        fp32_top1=round(fp32.top1 * 100, 2),
        drop_pp=round((fp32.top1 - chosen.top1) * 100, 2),
        speedup=round(fp32.p50_ms / chosen.p50_ms, 2) if chosen.p50_ms else None,
        variants=len(res.variants),
    )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| target | runtime | package | select | shipped | precision | size kB (FP32) | size ratio "
        "| top-1 % (FP32) | drop pp | p50 speed-up |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        if "precision" not in r:
            lines.append(
                f"| {r['target']} | {r['runtime']} | {r['package']} | {r['select']} | "
                f"{r['shipped']} | - | - | - | - | - | - |"
            )
            continue
        cells = [
            r["target"], r["runtime"], r["package"], r["select"], r["shipped"], r["precision"],
            f"{r['size_kb']:.0f} ({r['fp32_kb']:.0f})", f"{r['size_ratio']:.2f}x",
            f"{r['top1']:.2f} ({r['fp32_top1']:.2f})", f"{r['drop_pp']:.2f}",
            f"{r['speedup']:.2f}x",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--package", action="append", type=Path, default=[])
    ap.add_argument("--mobilenet", action="store_true")
    ap.add_argument("--targets", default=TARGETS)
    ap.add_argument("--select", default="fastest,smallest")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per variant")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-select-") as tmp:
        work = Path(tmp)
        packages = args.package or [
            REPO / "recipes" / "models" / n for n in ("inspect-primary", "inspect-fallback")
        ]
        private = []
        for p in packages:
            private.append(Path(shutil.copytree(p, work / "in" / p.name)))
        if args.mobilenet:
            from tools.bench_models import mobilenet_package

            private.append(mobilenet_package(work / "in" / "mobilenet-v2"))
        rows = []
        for target in args.targets.split(","):
            for pkg in private:
                for select in args.select.split(","):
                    out = work / "out" / f"{target}-{pkg.name}-{select}"
                    start = time.monotonic()
                    try:
                        res = optimise(
                            pkg, target, out, max_accuracy_drop=0.01, select=select,
                            timing_rounds=args.rounds,
                        )  # fmt: skip
                    except GateError as exc:
                        failed = f"gate failed: {exc}"[:80]
                        rows.append(
                            {"target": target, "package": pkg.name, "select": select,
                             "runtime": "", "shipped": failed}
                        )  # fmt: skip
                        continue
                    rows.append(row(target, pkg.name, select, res, time.monotonic() - start))
                    shutil.rmtree(out, ignore_errors=True)
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
