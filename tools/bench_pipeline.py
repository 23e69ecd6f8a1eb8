"""Benchmark: full pipeline per frame versus the bare back-end call, and FPS at 1 and 2 threads.

For each model and back end, on the same frames in the same run:

* ``bare``: ``model.run(x)`` on inputs pre-processed beforehand (the back end alone);
* ``pipeline``: the real :class:`Pipeline` (capture from memory, pre, infer, post, JSON-lines
  publish to a file), per-frame time measured between consecutive frame callbacks;
* ``overhead`` = pipeline / bare - 1 (goal <= 5 %), in wall time and in CPU time of the process
  (CPU time is not inflated by other work on a shared machine, wall time is what a camera sees);
* the fixed cost per frame split by stage, as the pipeline itself measured it (pre, post,
  publish, and ``loop``: everything else: capture, timing, record building, callbacks).

Models: ``--model DIR`` (default: the reference package, 96x96, ~0.2 ms: the worst case for a
fixed per-frame cost), ``--mobilenet`` (a MobileNetV2-shaped classifier, 224x224, 1000 classes,
random weights), ``--pose`` (mediapipe 0.10.14's pose_detection.tflite, a real SSD detector,
224x224 letterboxed from 640x480 frames, 2254 anchors decoded + NMS).

Bare and pipeline rounds alternate (``--rounds``) and the median round is reported, so drift on
a shared machine hits both alike. Within a round the per-frame figure is the median frame:
preemption by other processes adds time to a few frames only, and would otherwise dominate.

    .venv/bin/python tools/bench_pipeline.py --mobilenet --pose --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.inference.backends import BackendOptions, get_backend  # noqa: E402
from appliance.inference.errors import InferenceError  # noqa: E402
from appliance.inference.package import load_package  # noqa: E402
from appliance.inference.pipeline import Pipeline, PipelineConfig  # noqa: E402
from appliance.inference.preprocess import Preprocessor  # noqa: E402
from appliance.inference.sink import JsonlSink  # noqa: E402
from appliance.inference.sources import ArraySource  # noqa: E402

WARM = 8  # frames skipped at the start of every timed loop


@dataclass
class Target:
    label: str
    pkg: Path
    backend: str
    file: str | None
    frames: np.ndarray  # [N, H, W, 3] uint8, RGB


@dataclass
class Run:
    wall_ms: float  # per frame, mean (throughput: FPS = 1000 / wall_ms)
    typical_ms: float  # per frame, median (robust: preemption by other work hits few frames)
    cpu_ms: float  # process CPU time per frame
    stages_us: dict[str, float]  # pipeline only: median per stage


def bare(t: Target, threads: int) -> Run:
    """``model.run`` alone on pre-processed inputs."""
    model = get_backend(t.backend).load(
        load_package(t.pkg), t.file, BackendOptions(threads=threads)
    )
    pre = Preprocessor.for_model(model)
    xs = [pre(img, "RGB")[0] for img in t.frames]
    for x in xs[:WARM]:
        model.run(x)
    marks = [time.perf_counter()]
    c0 = time.process_time()
    for x in xs[WARM:]:
        model.run(x)
        marks.append(time.perf_counter())
    c1 = time.process_time()
    n = len(xs) - WARM
    per = np.diff(marks) * 1e3
    run = Run(float(per.mean()), float(np.median(per)), (c1 - c0) * 1e3 / n, {})
    model.close()
    return run


def pipeline(t: Target, threads: int, out: Path) -> Run:
    """The whole pipeline, steady state (from the WARM-th frame callback to the last)."""
    cfg = PipelineConfig(
        model=str(t.pkg), source="bench", backends=[t.backend], model_file=t.file, threads=threads
    )
    marks: list[float] = []
    cpu_marks: list[float] = []
    last = len(t.frames) - 1

    def on_frame(_r: object) -> None:
        marks.append(time.perf_counter())
        # process_time is a real syscall (a preemption point on a busy machine, which moves
        # time between stages): read it only at the two ends of the timed span.
        if len(marks) - 1 in (WARM, last):
            cpu_marks.append(time.process_time())

    pipe = Pipeline(cfg, sink=JsonlSink(out), source=ArraySource("bench", t.frames, loops=1))
    pipe.run(on_frame=on_frame)
    if pipe.chain.runner is None or pipe.stats.degraded_frames:
        raise InferenceError(f"pipeline degraded: {[e.reason for e in pipe.events]}")
    n = len(marks) - 1 - WARM
    per = np.diff(marks[WARM:]) * 1e3
    cpu = (cpu_marks[-1] - cpu_marks[0]) * 1e3 / n
    stages = {s: float(np.median(list(pipe.stats.ms[s])[WARM + 1 :])) * 1e3 for s in pipe.stats.ms}
    # Everything between frame callbacks that is not a timed stage (medians: approximately).
    stages["loop"] = float(np.median(per)) * 1e3 - sum(
        stages[s] for s in ("capture", "pre", "infer", "post", "publish")
    )
    return Run(float(per.mean()), float(np.median(per)), cpu, stages)


def reference_targets(pkg: Path, backends: list[str], count: int) -> list[Target]:
    images, _ = load_package(pkg).load_reference()
    frames = images[:count]
    out = []
    m = load_package(pkg).manifest
    for b in backends:
        files = [f.path for f in m.files if f.format == "tflite"] if b == "litert" else [None]
        out += [Target(f"{pkg.name}", pkg, b, f, frames) for f in files]
    return out


def mobilenet_target(work: Path, count: int) -> Target:
    sys.path.insert(0, str(REPO / "tools"))
    from bench_models import mobilenet_package

    pkg = mobilenet_package(work / "mobilenet-v2-like", count=count, calib=1)
    images, _ = load_package(pkg).load_reference()
    return Target("mobilenet-v2-like", pkg, "onnxruntime", None, images)


def pose_target(work: Path, count: int) -> Target:
    """mediapipe's pose detector on 640x480 frames (a photo, shifted per frame: never cache-hot)."""
    import cv2
    import matplotlib

    from tests.inference.fixtures import tflite_package
    from tests.inference.mediapipe import tflite_models
    from tests.inference.test_mediapipe import POSE

    photo = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    if photo is None:
        raise SystemExit("matplotlib's sample photo grace_hopper.jpg is missing")
    base = cv2.resize(photo, (680, 520))[..., ::-1]
    frames = np.stack([base[i % 40 : i % 40 + 480, i % 37 : i % 37 + 640] for i in range(count)])
    model = tflite_models()["pose_detection"]
    pkg = tflite_package(work / "pose", model, 224, 224, "detection", POSE, ["person"])
    return Target("pose_detection 640x480", pkg, "litert", None, np.ascontiguousarray(frames))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=REPO / "recipes/models/inspect-primary")
    ap.add_argument("--backends", default="onnxruntime,openvino,litert,opencv,tensorrt")
    ap.add_argument("--frames", type=int, default=256, help="frames per loop (reference model)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mobilenet", action="store_true", help="add a MobileNetV2-shaped model")
    ap.add_argument("--pose", action="store_true", help="add mediapipe's pose detector")
    ap.add_argument("--only-extra", action="store_true", help="skip the reference package")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        targets: list[Target] = []
        if not args.only_extra:
            targets += reference_targets(args.model, args.backends.split(","), args.frames)
        if args.mobilenet:
            targets.append(mobilenet_target(work, 64))
        if args.pose:
            targets.append(pose_target(work, 96))
        print(f"median of {args.rounds} alternating rounds; overhead = pipeline / bare - 1\n")
        head = (
            f"{'model':22} {'back end':11} {'file':17} {'bare ms':>8} {'pipe ms':>8} "
            f"{'ovh':>8} {'ovh mean':>8} {'ovh cpu':>8} {'ovh 2t':>7} {'fps 1t':>7} {'fps 2t':>7}"
        )
        print(head)
        breakdown = []
        for t in targets:
            runs: dict[str, list[Run]] = {"b1": [], "p1": [], "b2": [], "p2": []}
            try:
                for _ in range(args.rounds):
                    runs["b1"].append(bare(t, 1))
                    runs["p1"].append(pipeline(t, 1, work / "r.jsonl"))
                    runs["b2"].append(bare(t, 2))
                    runs["p2"].append(pipeline(t, 2, work / "r.jsonl"))
                    (work / "r.jsonl").unlink()
            except InferenceError as exc:
                print(f"{t.label:22} {t.backend:11} {t.file or '':17} unavailable: {str(exc)[:60]}")
                continue

            def med(key: str, attr: str, runs: dict[str, list[Run]] = runs) -> float:
                return float(statistics.median(getattr(r, attr) for r in runs[key]))

            b1, p1, b2, p2 = (med(k, "typical_ms") for k in ("b1", "p1", "b2", "p2"))
            mb1, mp1, mp2 = (med(k, "wall_ms") for k in ("b1", "p1", "p2"))
            cb, cp = med("b1", "cpu_ms"), med("p1", "cpu_ms")
            print(
                f"{t.label:22} {t.backend:11} {t.file or 'model.onnx':17} {b1:8.3f} {p1:8.3f} "
                f"{(p1 / b1 - 1) * 100:7.1f}% {(mp1 / mb1 - 1) * 100:7.1f}% "
                f"{(cp / cb - 1) * 100:7.1f}% {(p2 / b2 - 1) * 100:6.1f}% "
                f"{1000 / mp1:7.1f} {1000 / mp2:7.1f}"
            )
            stages = {
                s: statistics.median(r.stages_us[s] for r in runs["p1"])
                for s in ("pre", "infer", "post", "publish", "capture", "loop")
            }
            breakdown.append((t, b1 * 1e3, stages))
        print(
            "\nbare/pipe ms and ovh: median frame (robust to preemption by other work); ovh mean:"
            " mean frame time (what FPS is); ovh cpu: process CPU time per frame"
        )
        print("\nper-frame cost inside the pipeline at 1 thread, us (medians):")
        print(
            f"{'model':22} {'back end':11} {'bare':>8} {'infer':>8} {'pre':>7} {'post':>7} "
            f"{'publish':>7} {'capture':>7} {'loop':>7}"
        )
        for t, bare_us, s in breakdown:
            print(
                f"{t.label:22} {t.backend:11} {bare_us:8.1f} {s['infer']:8.1f} {s['pre']:7.1f} "
                f"{s['post']:7.1f} {s['publish']:7.1f} {s['capture']:7.1f} {s['loop']:7.1f}"
            )
    load = os.getloadavg()
    print(
        f"\nload average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs (other work on the machine skews wall-time figures)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
