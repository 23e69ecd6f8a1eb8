"""Benchmark model variants per runtime on this CPU: size, latency at 1 and 2 threads, accuracy.

    .venv/bin/python tools/bench_models.py [--package DIR ...] [--mobilenet] [--threads 1,2]
                                           [--rounds 3] [--json OUT]

For each package: the FP32 ONNX and an INT8 QDQ ONNX (``image.model.quantise``, the package's
calibration split) run on onnxruntime, OpenVINO (f32 hint and the CPU's default hint, bf16 where
supported) and OpenCV DNN (FP32), side by side in one run, through the device's own back ends
and pre-processing. Ratios are against FP32 on the same runtime at the same thread count.

Packages: the reference packages (recipes/models/inspect-primary, inspect-fallback) if present,
copied privately (they may be regenerated meanwhile). ``--mobilenet`` adds a MobileNetV2-shaped
network (224x224, 3.5 M parameters, random weights, labels = its own FP32 predictions): its size
and latency are representative, its accuracy under INT8 is not (an untrained network has no
margins; the issue measured 9-12 % agreement for one).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.inference.errors import PackageError  # noqa: E402
from appliance.inference.package import load_package  # noqa: E402
from image.model.eval import EvaluationError, evaluate  # noqa: E402
from image.model.nncf import fp16_ir, nncf_available, nncf_int8_ir  # noqa: E402
from image.model.optimise import _entry  # noqa: E402
from image.model.quantise import quantise_onnx_int8  # noqa: E402

# (runtime, file, f32 hint, label)
VARIANTS = [
    ("onnxruntime", "model.onnx", True, "fp32"),
    ("onnxruntime", "model_int8.onnx", True, "int8 s8s8"),
    ("onnxruntime", "model_int8_u8.onnx", True, "int8 u8s8"),
    ("openvino", "model.onnx", True, "fp32 (f32 hint)"),
    ("openvino", "model.onnx", False, "fp32 (default hint)"),
    ("openvino", "model_int8.onnx", True, "int8 (f32 hint)"),
    ("openvino", "model_int8.onnx", False, "int8 (default hint)"),
    ("openvino", "model_int8_u8.onnx", True, "int8 u8s8 (f32 hint)"),
    ("openvino", "model_fp16.xml", True, "fp16 IR (f32 hint)"),
    ("openvino", "model_int8.xml", True, "int8 NNCF (f32 hint)"),
    ("openvino", "model_int8.xml", False, "int8 NNCF (default)"),
    ("opencv", "model.onnx", True, "fp32"),
]


def mobilenet_v2_onnx(seed: int = 0) -> bytes:
    """MobileNetV2 (width 1.0, 224x224, BN folded into conv biases), random He-init weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    init: list[Any] = []
    n = [0]

    def conv(x: str, cin: int, cout: int, k: int, s: int, group: int = 1, relu: bool = True) -> str:
        n[0] += 1
        i = n[0]
        w = rng.normal(0, np.sqrt(2 / (cin // group * k * k)), (cout, cin // group, k, k))
        init.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        init.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}"))
        p = k // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], strides=[s, s], pads=[p] * 4, group=group
            )
        )
        if not relu:
            return f"c{i}"
        nodes.append(helper.make_node("Clip", [f"c{i}", "zero", "six"], [f"r{i}"]))
        return f"r{i}"

    init += [
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6, np.float32), "six"),
    ]
    x, cin = conv("input", 3, 32, 3, 2), 32
    for t, c, reps, s in [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]:
        for r in range(reps):
            stride = s if r == 0 else 1
            h = conv(x, cin, cin * t, 1, 1) if t != 1 else x
            h = conv(h, cin * t, cin * t, 3, stride, group=cin * t)
            h = conv(h, cin * t, c, 1, 1, relu=False)
            if stride == 1 and cin == c:
                n[0] += 1
                nodes.append(helper.make_node("Add", [x, h], [f"a{n[0]}"]))
                h = f"a{n[0]}"
            x, cin = h, c
    x = conv(x, cin, 1280, 1, 1)
    fw = rng.normal(0, 0.01, (1000, 1280)).astype(np.float32)
    init += [
        numpy_helper.from_array(fw, "fw"),
        numpy_helper.from_array(np.zeros(1000, np.float32), "fb"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mobilenet_v2_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def mobilenet_package(root: Path, count: int = 64, calib: int = 32) -> Path:
    import onnxruntime as ort

    root.mkdir(parents=True)
    data = mobilenet_v2_onnx()
    (root / "model.onnx").write_bytes(data)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((images / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    labels = np.array([sess.run(None, {"input": x[i : i + 1]})[0].argmax() for i in range(count)])
    np.savez_compressed(root / "reference.npz", images=images, labels=labels.astype(np.int64))
    np.savez_compressed(
        root / "calibration.npz", images=rng.integers(0, 256, (calib, 224, 224, 3), np.uint8)
    )
    m = {
        "format": 1,
        "name": "mobilenet-v2-like",
        "version": "0",
        "task": "classification",
        "labels": [str(i) for i in range(1000)],
        "files": [
            {
                "path": "model.onnx",
                "format": "onnx",
                "precision": "fp32",
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
        "input": {
            "name": "input",
            "shape": [1, 3, 224, 224],
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "scale": 1 / 255,
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "output": {"name": "logits", "kind": "logits"},
        "budget_ms": {"capture": 30, "pre": 5, "infer": 50, "post": 2, "publish": 5, "total": 90},
        "reference": {"split": "reference.npz", "count": count, "top1": 1.0},
        "calibration": {"split": "calibration.npz", "count": calib},
    }
    (root / "model.json").write_text(json.dumps(m))
    return root


def with_int8(src: Path, work: Path) -> Path:
    """A private copy of ``src`` whose model.json lists model.onnx and a fresh model_int8.onnx."""
    dst = Path(shutil.copytree(src, work / src.name))
    pkg = load_package(dst)
    quantise_onnx_int8(pkg, dst / "model_int8.onnx")
    quantise_onnx_int8(pkg, dst / "model_int8_u8.onnx", unsigned_activations=True)
    data = json.loads((dst / "model.json").read_text())
    fp32 = next(f for f in data["files"] if f["format"] == "onnx")
    data["files"] = [fp32, _entry(dst, "model_int8.onnx", "int8")]
    data["files"].append(_entry(dst, "model_int8_u8.onnx", "int8"))
    if nncf_available():
        data["files"].append(_entry(dst, fp16_ir(pkg, dst), "fp16"))
        data["files"].append(_entry(dst, nncf_int8_ir(pkg, dst), "int8"))
    (dst / "model.json").write_text(json.dumps(data))
    return dst


def bench(pkg_dir: Path, threads: list[int], rounds: int) -> list[dict[str, Any]]:
    pkg = load_package(pkg_dir)
    images, labels = pkg.load_reference()
    rows: list[dict[str, Any]] = []
    for t in threads:
        base: dict[str, tuple[float, float, int]] = {}
        for runtime, file, f32, label in VARIANTS:
            try:
                ev = evaluate(
                    pkg,
                    runtime,
                    file=file,
                    threads=t,
                    precision_f32=f32,
                    images=images,
                    labels=labels,
                    timing_rounds=rounds,
                )
            except (EvaluationError, PackageError) as exc:
                print(f"  {runtime} {label}: skipped ({exc})", file=sys.stderr)
                continue
            if label.startswith("fp32") and runtime not in base:
                base[runtime] = (ev.p50_ms, ev.top1, ev.size_bytes)
            b = base.get(runtime, (ev.p50_ms, ev.top1, ev.size_bytes))
            rows.append(
                {
                    "package": pkg.name,
                    "threads": t,
                    "runtime": runtime,
                    "variant": label,
                    "top1": ev.top1,
                    "drop_pp": (b[1] - ev.top1) * 100,
                    "p50_ms": ev.p50_ms,
                    "p95_ms": ev.p95_ms,
                    "speedup": b[0] / ev.p50_ms,
                    "size_mb": ev.size_bytes / 1e6,
                    "size_ratio": b[2] / ev.size_bytes,
                    "device": ev.device,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--package", action="append", type=Path, default=[])
    ap.add_argument("--mobilenet", action="store_true")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        work = Path(tmp)
        sources = list(args.package)
        if not sources:
            for name in ("inspect-primary", "inspect-fallback"):
                ref = REPO / "recipes" / "models" / name
                if (ref / "model.json").exists():
                    sources.append(Path(shutil.copytree(ref, work / "src" / name)))
        if args.mobilenet:
            sources.append(mobilenet_package(work / "src" / "mobilenet-v2-like"))
        if not sources:
            sys.exit("no package: pass --package DIR or --mobilenet (reference packages absent)")
        for src in sources:
            print(f"benchmarking {src.name} ...", file=sys.stderr)
            rows += bench(with_int8(src, work / "int8"), threads, args.rounds)
    hdr = (
        f"{'package':<20} {'thr':>3} {'runtime':<12} {'variant':<22} {'top-1':>6} "
        f"{'drop pp':>7} {'p50 ms':>8} {'p95 ms':>8} {'speed-up':>8} {'MB':>7} {'size x':>6}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['package']:<20} {r['threads']:>3} {r['runtime']:<12} {r['variant']:<22} "
            f"{r['top1']:>6.3f} {r['drop_pp']:>7.2f} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} "
            f"{r['speedup']:>7.2f}x {r['size_mb']:>7.3f} {r['size_ratio']:>5.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
