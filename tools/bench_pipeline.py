"""Benchmark: full pipeline per frame versus the bare back-end call, and FPS at 1 and 2 threads.

For each back end (and each TFLite file for litert) on the same reference images in the same
run:

* ``bare``: ``model.run(x)`` on inputs pre-processed beforehand (the back end alone);
* ``pipeline``: the real :class:`Pipeline` (capture from memory, pre, infer, post, JSON-lines
  publish to a file), per-frame time measured between consecutive frame callbacks;
* ``overhead`` = pipeline / bare - 1 (goal <= 5 %), and pipeline FPS with 1 and 2 threads.

Bare and pipeline rounds alternate (``--rounds``) and the median round is reported, so drift on
a shared machine hits both alike.

    .venv/bin/python tools/bench_pipeline.py --model recipes/models/inspect-primary
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.inference.backends import BackendOptions, get_backend
from appliance.inference.errors import InferenceError
from appliance.inference.package import load_package
from appliance.inference.pipeline import Pipeline, PipelineConfig
from appliance.inference.preprocess import Preprocessor
from appliance.inference.sink import JsonlSink
from appliance.inference.sources import ArraySource


def bare_ms(
    pkg_dir: Path, backend: str, file: str | None, images: np.ndarray, threads: int
) -> float:
    """Mean ms per ``model.run`` on pre-processed inputs."""
    model = get_backend(backend).load(load_package(pkg_dir), file, BackendOptions(threads=threads))
    pre = Preprocessor.for_model(model)
    xs = [pre(img, "RGB")[0] for img in images]
    for x in xs[:8]:
        model.run(x)
    t0 = time.perf_counter()
    for x in xs:
        model.run(x)
    return (time.perf_counter() - t0) * 1000 / len(xs)


def pipeline_ms(
    pkg_dir: Path, backend: str, file: str | None, images: np.ndarray, threads: int, *, out: Path
) -> float:
    """Mean ms per frame of the whole pipeline, steady state (between frame callbacks)."""
    cfg = PipelineConfig(
        model=str(pkg_dir),
        source="bench",
        backends=[backend],
        model_file=file,
        threads=threads,
        top_k=3,
    )
    stamps: list[float] = []
    pipe = Pipeline(cfg, sink=JsonlSink(out), source=ArraySource("bench", images, loops=1))
    pipe.run(on_frame=lambda _r: stamps.append(time.perf_counter()))
    if pipe.chain.runner is None or pipe.stats.degraded_frames:
        raise InferenceError(f"pipeline degraded: {[e.reason for e in pipe.events]}")
    warm = 8  # skip the first frames, as the bare loop does
    return (stamps[-1] - stamps[warm]) * 1000 / (len(stamps) - 1 - warm)


def targets(pkg_dir: Path, backends: list[str]) -> list[tuple[str, str | None]]:
    m = load_package(pkg_dir).manifest
    out: list[tuple[str, str | None]] = []
    for b in backends:
        if b == "litert":
            out += [(b, f.path) for f in m.files if f.format == "tflite"]
        else:
            out.append((b, None))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=Path("recipes/models/inspect-primary"))
    ap.add_argument("--backends", default="onnxruntime,openvino,litert,opencv,tensorrt")
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    images, _ = load_package(args.model).load_reference()
    images = images[: args.frames]
    print(
        f"model {args.model}, {len(images)} frames of {images.shape[1]}x{images.shape[2]}, "
        f"median of {args.rounds} alternating rounds\n"
    )
    print(
        f"{'back end':12} {'file':20} {'bare ms':>8} {'pipe ms':>8} {'overhead':>9} "
        f"{'fps 1t':>8} {'fps 2t':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for backend, file in targets(args.model, args.backends.split(",")):
            try:
                bare, pipe, pipe2 = [], [], []
                for _ in range(args.rounds):
                    bare.append(bare_ms(args.model, backend, file, images, 1))
                    pipe.append(
                        pipeline_ms(args.model, backend, file, images, 1, out=Path(tmp) / "r.jsonl")
                    )
                    pipe2.append(
                        pipeline_ms(args.model, backend, file, images, 2, out=Path(tmp) / "r.jsonl")
                    )
            except InferenceError as exc:
                print(f"{backend:12} {file or '':20} unavailable: {str(exc)[:70]}")
                continue
            b, p, p2 = statistics.median(bare), statistics.median(pipe), statistics.median(pipe2)
            print(
                f"{backend:12} {file or 'model.onnx':20} {b:8.3f} {p:8.3f} "
                f"{(p / b - 1) * 100:8.1f}% {1000 / p:8.1f} {1000 / p2:8.1f}"
            )
    load = os.getloadavg()
    print(
        f"\nload average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs (other work on the machine skews absolute figures)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
