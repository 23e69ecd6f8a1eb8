"""Benchmark: full pipeline per frame versus the bare back-end call, and FPS at 1 and 2 threads.

For each model and back end, in one process, on one loaded model, on the same frames:

* ``bare``: ``model.run(x)`` of the package's plain file on inputs pre-processed beforehand
  (the back end alone, as a user would call it: the batch is copied in, the outputs out);
* ``pipeline``: the real :class:`Pipeline` loop (capture from memory, pre, infer, post,
  JSON-lines publish to a file through its writer thread) on what it loads by default: for the
  ONNX back ends the package's fused file (``kiln model fuse``: channel order, normalisation,
  layout, softmax and top-k in the graph; the packages are fused here as the image build does),
  with ``--plain`` also the plain ``model.onnx`` for comparison in the same run. On LiteRT and
  OpenVINO the pipeline runs zero-copy (``LoadedModel.run_frame``): the pre-processor writes
  into the runtime's input tensor and the post-processor reads its outputs in place, which the
  bare call, given a separate batch, cannot do.

Frames are BGR, as OpenCV cameras, video files and image folders deliver them.

alternating in short blocks (``--block`` frames, about 5-100 ms each): the source pauses the
pipeline every block and runs the same frames through the bare model. A busy 2-core machine
then slows both sides of each pair alike, and each block pair gives one ratio.

* ``ovh`` = median over block pairs of (pipeline block wall time / bare block wall time) - 1
  (goal <= 5 %): what a camera sees, robust to preemption by other processes;
* ``cpu`` = total process CPU time (``time.process_time``: all threads, the sink's writer
  included) of the pipeline blocks over that of the bare blocks, - 1: not inflated by other
  work on the machine; ``thr`` = the same with the main thread's CPU time only
  (``time.thread_time``);
* per-stage medians in microseconds as the pipeline measured them (pre, infer, post, publish,
  capture) and ``loop`` = median frame minus those stages (record, clocks, budget, stats);
* ``fps 1t`` / ``fps 2t``: frames per second of the pipeline alone (a separate run, no bare
  model loaded) with 1 and 2 back-end threads. ``ovh 2t`` with a fused file is indicative only:
  the fused and the plain file's sessions share the process and spin on each other's cores.

Models: ``--model DIR`` (default: the reference package, 96x96, ~0.1 ms: the worst case for a
fixed per-frame cost), ``--mobilenet`` (a MobileNetV2-shaped classifier, 224x224, 1000 classes,
random weights), ``--pose`` (mediapipe 0.10.14's pose_detection.tflite, a real SSD detector,
224x224 letterboxed from 640x480 frames, 2254 anchors decoded + NMS).

    .venv/bin/python tools/bench_pipeline.py --mobilenet --pose [--plain] [--rounds 3]

A runtime without OpenCV (the default generic-x86-64 image): ``--camera 640x480`` feeds frames
of a camera's size (the reference frames scaled up), so the pipeline resizes every frame, and
``--without-opencv`` adds, for each onnxruntime row, the same row with ``import cv2`` failing
(as in the frozen runtime without it: numpy resize and colour order), measured in the same run:

    .venv/bin/python tools/bench_pipeline.py --mobilenet --backends onnxruntime \
        --camera 640x480 --without-opencv --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.inference.backends import BackendOptions, LoadedModel, get_backend  # noqa: E402
from appliance.inference.errors import InferenceError  # noqa: E402
from appliance.inference.package import load_package  # noqa: E402
from appliance.inference.pipeline import Pipeline, PipelineConfig  # noqa: E402
from appliance.inference.preprocess import Preprocessor  # noqa: E402
from appliance.inference.sink import JsonlSink  # noqa: E402
from appliance.inference.sources import ArraySource, Frame  # noqa: E402

STAGES = ("capture", "pre", "infer", "post", "publish")


@dataclass
class Target:
    label: str
    pkg: Path
    backend: str
    file: str | None
    frames: np.ndarray  # [N, H, W, 3] uint8, in colour order ``color``
    block: int  # frames per block
    color: str = "BGR"  # what OpenCV cameras, files and folders deliver
    no_cv2: bool = False  # run as a runtime without OpenCV does (``import cv2`` fails)


@contextlib.contextmanager
def opencv_blocked(blocked: bool) -> Iterator[None]:
    """While ``blocked``, ``import cv2`` raises ImportError, as in a runtime without OpenCV."""
    if not blocked:
        yield
        return
    saved = sys.modules.get("cv2")
    sys.modules["cv2"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["cv2"]
        else:
            sys.modules["cv2"] = saved


def camera_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """``frames`` scaled (bilinear) to a camera's frame size, BGR as before."""
    from appliance.inference.resize import resize_linear

    return np.stack([resize_linear(f, width, height) for f in frames])


@dataclass
class Clocks:
    """Wall, process CPU and main-thread CPU time at one instant, seconds."""

    wall: float
    cpu: float
    thread: float

    @staticmethod
    def now() -> Clocks:
        return Clocks(time.perf_counter(), time.process_time(), time.thread_time())

    def since(self, start: Clocks) -> Clocks:
        return Clocks(self.wall - start.wall, self.cpu - start.cpu, self.thread - start.thread)


@dataclass
class Result:
    """Per block pair: (bare, pipeline) durations; per stage: the pipeline's own timings."""

    pairs: list[tuple[Clocks, Clocks]] = field(default_factory=list)
    # per block pair: (median bare call, median pipeline frame), seconds
    frame_pairs: list[tuple[float, float]] = field(default_factory=list)
    stages_us: dict[str, float] = field(default_factory=dict)
    frames_per_block: int = 1
    fps_alone: float = 0.0  # the pipeline on its own (see throughput())

    def wall_ratio(self) -> float:
        """Median over block pairs of the block times' ratio (every frame counts)."""
        return statistics.median(p.wall / b.wall for b, p in self.pairs)

    def frame_ratio(self) -> float:
        """Median over block pairs of the median frames' ratio (robust to preemption)."""
        return statistics.median(p / b for b, p in self.frame_pairs)

    def cpu_ratio(self, attr: str) -> float:
        bare = sum(getattr(b, attr) for b, _ in self.pairs)
        pipe = sum(getattr(p, attr) for _, p in self.pairs)
        return pipe / bare if bare > 0 else float("nan")

    def bare_ms(self) -> float:
        """Median bare call over all blocks."""
        return statistics.median(b for b, _ in self.frame_pairs) * 1e3

    def pipe_ms(self) -> float:
        """Median pipeline frame over all blocks."""
        return statistics.median(p for _, p in self.frame_pairs) * 1e3

    def fps(self) -> float:
        """Pipeline frames per second, measured on its own (no bare model loaded)."""
        return self.fps_alone


class Interleaved(ArraySource):
    """An in-memory source that, every ``block`` frames, runs those frames through the bare model.

    The pipeline block is timed from the end of one bare block to the start of the next (the
    whole loop: read, pre, infer, post, publish, record, callback, for ``block`` frames).
    """

    def __init__(self, t: Target, total: int, threads: int) -> None:
        super().__init__("bench", t.frames, color=t.color, loops=0)
        self.t = t
        self.total = total
        self.threads = threads
        self.pipe: Pipeline | None = None
        self.bare: LoadedModel | None = None  # the plain file when the pipeline runs a fused one
        self.xs: list[np.ndarray] = []
        self.result = Result(frames_per_block=t.block)
        self._pipe_start: Clocks | None = None
        self._bare: Clocks | None = None
        self._bare_median = 0.0
        self.marks: list[float] = []  # frame callbacks of the current pipeline block
        self.frame_s: list[float] = []  # every pipeline frame's time, in order

    def _bare_block(self, first: int) -> Clocks:
        assert self.pipe is not None
        if self.pipe.chain.runner is None:  # raised through Pipeline.run to main()
            raise InferenceError(f"not loaded: {self.pipe.events[-2].reason}")
        model = self.pipe.chain.runner.model
        fused = model.file.fused
        if fused is not None:  # bare = the plain file the fused one was made from
            if self.bare is None:
                options = BackendOptions(threads=self.threads)
                self.bare = get_backend(model.backend).load(model.package, fused.of, options)
            model = self.bare
        if not self.xs:  # a separate preprocessor: the pipeline's may reuse its buffers
            pre = Preprocessor.for_model(model)
            self.xs = [pre(img, self.t.color)[0].copy() for img in self.t.frames]
        n = len(self.xs)
        xs = [self.xs[(first + k) % n] for k in range(self.t.block)]
        marks = [0.0] * (len(xs) + 1)
        start = Clocks.now()
        marks[0] = start.wall
        for k, x in enumerate(xs, 1):
            model.run(x)
            marks[k] = time.perf_counter()
        took = Clocks.now().since(start)
        self._bare_median = float(np.median(np.diff(marks)))
        return took

    def on_frame(self, _record: object) -> None:
        self.marks.append(time.perf_counter())

    def _close_pair(self, end: Clocks) -> None:
        if self._pipe_start is None or self._bare is None:
            return
        self.result.pairs.append((self._bare, end.since(self._pipe_start)))
        # Frame k's time: from frame k-1's callback (or the block start) to frame k's callback.
        per = np.diff([self._pipe_start.wall, *self.marks])
        self.frame_s += per.tolist()
        self.result.frame_pairs.append((self._bare_median, float(np.median(per))))
        self.marks.clear()

    def read(self) -> Frame | None:
        i = self._i
        if i >= self.total:
            self._close_pair(Clocks.now())
            return None
        if i % self.t.block == 0:
            self._close_pair(Clocks.now())
            self._bare = self._bare_block(i)
            self._pipe_start = Clocks.now()
        return super().read()


def throughput(t: Target, threads: int, out: Path, frames: int, warm: int = 8) -> float:
    """Frames per second of the pipeline alone, after ``warm`` frames.

    Not taken from the alternating run: there a fused file's session and the plain file's bare
    session sit in one process, and with 2 threads each onnxruntime pool spins after its turn,
    taking the cores from the other (fused MobileNetV2 looked like 80 instead of 218 fps).
    """
    cfg = PipelineConfig(
        model=str(t.pkg),
        source="bench",
        backends=[t.backend],
        model_file=t.file,
        threads=threads,
        max_frames=frames + warm,
    )
    marks: list[float] = []
    src = ArraySource("bench", t.frames, color=t.color, loops=0)
    Pipeline(cfg, sink=JsonlSink(out), source=src).run(
        on_frame=lambda _r: marks.append(time.perf_counter())
    )
    return (len(marks) - warm - 1) / (marks[-1] - marks[warm])


def measure(t: Target, threads: int, out: Path, blocks: int, warm_blocks: int = 2) -> Result:
    """Alternate bare and pipeline blocks on one loaded model; drop the first ``warm_blocks``."""
    with opencv_blocked(t.no_cv2):
        return _measure(t, threads, out, blocks, warm_blocks)


def _measure(t: Target, threads: int, out: Path, blocks: int, warm_blocks: int) -> Result:
    cfg = PipelineConfig(
        model=str(t.pkg), source="bench", backends=[t.backend], model_file=t.file, threads=threads
    )
    src = Interleaved(t, (blocks + warm_blocks) * t.block, threads)
    pipe = Pipeline(cfg, sink=JsonlSink(out), source=src)
    src.pipe = pipe
    try:
        pipe.run(on_frame=src.on_frame)
    finally:
        if src.bare is not None:
            src.bare.close()
    if pipe.chain.runner is None or pipe.stats.degraded_frames:
        raise InferenceError(f"pipeline degraded: {[e.reason for e in pipe.events]}")
    res = src.result
    res.pairs = res.pairs[warm_blocks:]
    res.frame_pairs = res.frame_pairs[warm_blocks:]
    skip = warm_blocks * t.block
    res.stages_us = {
        s: float(np.median(list(pipe.stats.ms[s])[skip:])) * 1e3 for s in (*STAGES, "total")
    }
    # Per frame: its time between callbacks minus its own timed stages (record, clocks, stats).
    totals = list(pipe.stats.ms["total"])[skip:]
    frame_s = src.frame_s[skip:]
    n = min(len(totals), len(frame_s))
    loop = np.asarray(frame_s[-n:]) * 1e6 - np.asarray(totals[-n:]) * 1e3
    res.stages_us["loop"] = float(np.median(loop))
    res.stages_us["bare"] = res.bare_ms() * 1e3
    res.stages_us.update(warm_stages(pipe, t))
    res.fps_alone = throughput(t, threads, out, blocks * t.block)
    return res


def warm_stages(pipe: Pipeline, t: Target, frames: int = 16) -> dict[str, float]:
    """pre and post run twice in a row, the second timed: their cost with warm caches.

    Inside the pipeline both run right after inference has evicted the caches; the difference
    is the price of that (the bare loop never pays it: it only calls the model).
    """
    runner = pipe.chain.runner
    assert runner is not None
    pre_us, post_us = [], []
    for img in t.frames[:frames]:
        runner.pre(img, t.color)
        s0 = time.perf_counter()
        x, box = runner.pre(img, t.color)
        s1 = time.perf_counter()
        raw = runner.model.run(x)
        runner.post(raw, box, (img.shape[1], img.shape[0]))
        s2 = time.perf_counter()
        runner.post(raw, box, (img.shape[1], img.shape[0]))
        s3 = time.perf_counter()
        pre_us.append((s1 - s0) * 1e6)
        post_us.append((s3 - s2) * 1e6)
    return {"pre warm": float(np.median(pre_us)), "post warm": float(np.median(post_us))}


ONNX_BACKENDS = ("onnxruntime", "openvino", "opencv", "tensorrt")


def bgr(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images[..., ::-1])


def fused_copy(pkg: Path, work: Path) -> Path:
    """A copy of ``pkg`` with fused ONNX files for BGR frames, as ``kiln`` builds ship it."""
    from image.model.fuse import fuse_package

    out = work / pkg.name
    if not out.exists():
        shutil.copytree(pkg, out)
        fuse_package(out, color="BGR", check=8)
    return out


def onnx_rows(
    label: str, pkg: Path, b: str, frames: np.ndarray, block: int, plain: bool
) -> list[Target]:
    """The fused file (what the pipeline loads by default) and, with ``plain``, the ONNX file."""
    rows = [Target(label, pkg, b, None, frames, block)]
    if plain:
        rows.append(Target(label, pkg, b, "model.onnx", frames, block))
    return rows


def reference_targets(
    pkg: Path, work: Path, backends: list[str], count: int, plain: bool
) -> list[Target]:
    images, _ = load_package(pkg).load_reference()
    frames = bgr(images[:count])
    fused = fused_copy(pkg, work)
    m = load_package(pkg).manifest
    out = []
    for b in backends:
        if b in ONNX_BACKENDS:
            out += onnx_rows(pkg.name, fused, b, frames, 32, plain)
        elif b == "litert":
            tflites = [f.path for f in m.files if f.format == "tflite"]
            out += [Target(pkg.name, pkg, b, f, frames, 32) for f in tflites]
    return out


def mobilenet_targets(work: Path, count: int, backends: list[str], plain: bool) -> list[Target]:
    """The MobileNetV2-shaped ONNX classifier on every ONNX-reading back end asked for."""
    sys.path.insert(0, str(REPO / "tools"))
    from bench_models import mobilenet_package

    pkg = fused_copy(mobilenet_package(work / "src" / "mobilenet-v2-like", count, calib=1), work)
    images, _ = load_package(pkg).load_reference()
    out = []
    for b in backends:
        if b in ONNX_BACKENDS:
            out += onnx_rows("mobilenet-v2-like", pkg, b, bgr(images), 4, plain)
    return out


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
    base = cv2.resize(photo, (680, 520))  # BGR, as a camera delivers it
    frames = np.stack([base[i % 40 : i % 40 + 480, i % 37 : i % 37 + 640] for i in range(count)])
    model = tflite_models()["pose_detection"]
    pkg = tflite_package(work / "pose", model, 224, 224, "detection", POSE, ["person"])
    return Target("pose_detection 640x480", pkg, "litert", None, np.ascontiguousarray(frames), 4)


def pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:6.1f}%"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=REPO / "recipes/models/inspect-primary")
    ap.add_argument("--backends", default="onnxruntime,openvino,litert,opencv,tensorrt")
    ap.add_argument("--frames", type=int, default=256, help="distinct frames (reference model)")
    ap.add_argument("--blocks", type=int, default=60, help="block pairs per measurement")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measurements per row (1 and 2 threads alternate); "
        "every figure is the median over rounds",
    )
    ap.add_argument("--mobilenet", action="store_true", help="add a MobileNetV2-shaped model")
    ap.add_argument("--pose", action="store_true", help="add mediapipe's pose detector")
    ap.add_argument("--only-extra", action="store_true", help="skip the reference package")
    ap.add_argument(
        "--plain",
        action="store_true",
        help="also run the pipeline on the plain ONNX file (file model.onnx) next to the fused one",
    )
    ap.add_argument(
        "--camera", metavar="WxH", help="frames of this size (e.g. 640x480): resized every frame"
    )
    ap.add_argument(
        "--without-opencv",
        action="store_true",
        help="add each onnxruntime row again as a runtime without OpenCV runs it",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        targets: list[Target] = []
        if not args.only_extra:
            targets += reference_targets(
                args.model, work, args.backends.split(","), args.frames, args.plain
            )
        if args.mobilenet:
            targets += mobilenet_targets(work, 64, args.backends.split(","), args.plain)
        if args.pose:
            targets.append(pose_target(work, 96))
        if args.camera:
            cw, ch = (int(v) for v in args.camera.lower().split("x"))
            for t in targets:
                if t.backend in ONNX_BACKENDS:
                    t.frames = camera_frames(t.frames, cw, ch)
                    t.label = f"{t.label} @{cw}x{ch}"
        if args.without_opencv:
            targets = [
                row
                for t in targets
                for row in (
                    [t, replace(t, label=f"{t.label} no-cv2", no_cv2=True)]
                    if t.backend == "onnxruntime"
                    else [t]
                )
            ]
        print(
            f"{args.blocks} alternating block pairs per measurement, median of {args.rounds} "
            "measurement(s) per row. ovh: median over pairs of the "
            "median frames' ratio; blk: median over pairs of the block times' ratio (every "
            "frame counts, preemption too); cpu/thr: summed CPU time ratio (process / main "
            "thread); all = pipeline / bare - 1\n"
        )
        print(
            f"{'model':34} {'back end':11} {'file':17} {'blk':>3} {'bare ms':>8} {'pipe ms':>8} "
            f"{'ovh':>7} {'blk':>7} {'cpu':>7} {'thr':>7} {'ovh 2t':>7} {'fps 1t':>7} {'fps 2t':>7}"
        )
        breakdown = []
        for t in targets:
            out = work / "r.jsonl"
            ones: list[Result] = []
            twos: list[Result] = []
            try:
                for _ in range(args.rounds):
                    ones.append(measure(t, 1, out, args.blocks))
                    twos.append(measure(t, 2, out, args.blocks))
            except InferenceError as exc:
                print(f"{t.label:34} {t.backend:11} {t.file or '':17} unavailable: {str(exc)[:60]}")
                continue
            finally:
                out.unlink(missing_ok=True)

            def med(rs: list[Result], f: Callable[[Result], float]) -> float:
                return float(statistics.median(f(r) for r in rs))

            print(
                f"{t.label:34} {t.backend:11} {t.file or '(default)':17} {t.block:3d} "
                f"{med(ones, Result.bare_ms):8.3f} {med(ones, Result.pipe_ms):8.3f} "
                f"{pct(med(ones, Result.frame_ratio))} {pct(med(ones, Result.wall_ratio))} "
                f"{pct(med(ones, lambda r: r.cpu_ratio('cpu')))} "
                f"{pct(med(ones, lambda r: r.cpu_ratio('thread')))} "
                f"{pct(med(twos, Result.frame_ratio))} "
                f"{med(ones, Result.fps):7.1f} {med(twos, Result.fps):7.1f}",
                flush=True,
            )
            stages = {k: statistics.median(r.stages_us[k] for r in ones) for k in ones[0].stages_us}
            breakdown.append((t, stages))
        print(
            "\nper-frame cost inside the pipeline at 1 thread, us (medians); loop: a frame's time "
            "minus its timed stages; pre/post warm: the same call repeated at once (caches warm)"
        )
        cols = (
            "bare",
            "infer",
            "pre",
            "post",
            "publish",
            "capture",
            "loop",
            "pre warm",
            "post warm",
        )
        print(f"{'model':34} {'back end':11} {'file':17} " + " ".join(f"{c:>9}" for c in cols))
        for t, s in breakdown:
            print(
                f"{t.label:34} {t.backend:11} {t.file or '(default)':17} "
                + " ".join(f"{s[c]:9.1f}" for c in cols)
            )
    load = os.getloadavg()
    print(
        f"\nload average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
