"""Benchmark: telemetry's cost on the device and the fleet ingester's rate.

1. **CPU overhead on the inference loop**, two ways (process CPU time, ``time.process_time``:
   all threads of this process, not wall time):

   * *accounting*: ``TelemetrySink.publish`` of fresh result records with the clock standing
     still (the frame path alone), and one window close (fold, percentiles, system sample,
     drift, JSON message, status file) of a full window; per frame at ``--fps``: the first plus
     the second divided by the window's frames; as a share of the baseline loop's frame CPU;
   * *whole loop*: one run of the real pipeline (reference model, onnxruntime, one thread) over
     the reference split whose results go through the TelemetrySink in every other block of
     200 frames and are dropped in the others (ABBA order). Adjacent blocks share the model,
     the process and the machine's load of the moment (separate runs, as this bench once
     compared, differed by more than the effect on a busy machine). The sink's clock is the
     camera's (1/fps a telemetry frame), so at the default 60 s window and 30 fps a window
     closes every 1,800 telemetry frames as on a device. Printed: the overhead over all blocks
     (window closes included), the median of the per-pair ratios with their quartiles, and
     the machine's load average. ``--control`` runs the same with a sink that does nothing in
     its blocks: what it reads is the bench's own bias (about 0).
2. **Bytes per window and per day** at the default 60 s window and 30 fps (simulated clock):
   the JSON payload plus MQTT framing (fixed header, topic, packet id, PUBACK).
3. **Ingest rate** of one ``kiln fleet ingest`` process into SQLite (and PostgreSQL with
   ``--postgres``): N windows published by 20 real MQTT clients to a real mosquitto; messages
   per second from the first stored to the last; goal 1,000 devices at 60 s (16.7 msg/s) x 10.

    .venv/bin/python tools/bench_telemetry.py [--only cpu|bytes|ingest] [--control] [--frames 36000]
        [--ingest 5000] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from appliance.inference.pipeline import Pipeline, PipelineConfig  # noqa: E402
from appliance.telemetry.config import TelemetryConfig  # noqa: E402
from appliance.telemetry.identity import Identity  # noqa: E402
from appliance.telemetry.setup import references  # noqa: E402
from appliance.telemetry.uplink import TelemetrySink  # noqa: E402

PACKAGE = REPO / "recipes" / "models" / "inspect-primary"
IDENT = Identity("bench-0001", "bench-site", "generic-x86-64", "1.0.0", "a")


class Counting:
    """The uplink: counts what would go on the wire (the MQTT sink's own cost is per message)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def publish(self, record: dict[str, object]) -> None:
        self.messages.append(msgspec.json.encode(record))

    def close(self) -> None:
        pass


class _Nothing:
    """The control's sink: the same calls, no work (the bench's own bias reads as overhead)."""

    def publish(self, record: dict[str, object]) -> None:
        pass

    def close(self) -> None:
        pass


class _Blocks:
    """The sink of the whole-loop measure: results go to the telemetry sink in every other
    block of frames and are dropped in the others; events always go."""

    def __init__(self, tele: TelemetrySink | _Nothing) -> None:
        self.tele = tele
        self.on = False

    def publish(self, record: dict[str, object]) -> None:
        if self.on or record.get("type") != "result":
            self.tele.publish(record)

    def close(self) -> None:
        self.tele.close()


def loop_blocks(
    frames: int,
    window_s: float,
    fps: float = 30.0,
    block: int = 200,
    control: bool = False,
    package: Path = PACKAGE,
) -> tuple[list[float], list[float]]:
    """One pipeline run (reference model, onnxruntime, one thread) whose results go through the
    TelemetrySink in every other block of ``block`` frames (ABBA order) and are dropped in the
    others: process CPU seconds per block, (baseline blocks, telemetry blocks), in pairs.

    Adjacent blocks of one run share the model, the process and the machine's load of that
    moment, which separate runs do not. The camera clock advances 1/fps per telemetry frame,
    so a window closes every ``window_s * fps`` telemetry frames, as on a device.
    """
    cfg = PipelineConfig(
        model=str(package),
        source=f"npz:{package}/reference.npz?loop=1",
        backends=["onnxruntime"],
        max_frames=frames + 1,
    )
    camera = [1_800_000_000.0]
    refs, primary = references(str(package))
    tele = TelemetrySink(
        TelemetryConfig(window_s=window_s, data_dir=tempfile.mkdtemp(prefix="bench-telemetry-")),
        IDENT,
        Counting(),
        references=refs,
        primary_model=primary,
        clock=lambda: camera[0],
        timer=False,
    )
    sink = _Blocks(_Nothing() if control else tele)
    base: list[float] = []
    with_tele: list[float] = []
    state = {"n": 0, "mark": 0.0, "block": 0}

    def on_frame(_record: dict[str, object]) -> None:
        if sink.on:
            camera[0] += 1 / fps
        n = state["n"] = state["n"] + 1
        if n == 1 or n % block == 1:  # a block ends (the first frame only starts the clock)
            now = time.process_time()
            if n > 1:
                (with_tele if sink.on else base).append(now - state["mark"])
            state["mark"] = now
            index = int(state["block"])
            state["block"] = index + 1
            pair, second = divmod(index, 2)
            sink.on = (pair % 2 == 0) == (second == 1)  # B T, T B, B T, ...

    Pipeline(cfg, sink=sink).run(threading.Event(), on_frame=on_frame)
    pairs = min(len(base), len(with_tele))
    return base[:pairs], with_tele[:pairs]


def _record(i: int) -> dict[str, object]:
    """A result record as the pipeline makes it for the reference model (a fresh dict)."""
    return {
        "type": "result",
        "frame": i,
        "ts": 1.0,
        "top": [{"label": ("ok", "scratch", "crack", "missing_hole")[i % 4], "index": i % 4,
                 "score": 0.9}, {"label": "ok", "index": 0, "score": 0.05}],
        "model": "inspect-primary",
        "version": "1.0.0",
        "backend": "onnxruntime",
        "file": "model.onnx",
        "degraded": False,
        "ms": {"capture": 0.01, "pre": 0.02, "infer": 0.15 + (i % 7) / 100, "post": 0.02},
    }  # fmt: skip


def _sink(window_s: float, clock: Any) -> TelemetrySink:
    refs, primary = references(str(PACKAGE))
    return TelemetrySink(
        TelemetryConfig(window_s=window_s, data_dir=tempfile.mkdtemp(prefix="bench-telemetry-")),
        IDENT,
        Counting(),
        references=refs,
        primary_model=primary,
        clock=clock,
        timer=False,
    )


def frame_path_cost(n: int = 1800, repeats: int = 20) -> float:
    """CPU seconds of one ``TelemetrySink.publish`` of a result, no window closing (the frame
    path alone: the row appended; a window's fold and close are :func:`window_close_cost`)."""
    tele = _sink(3600.0, lambda: 1_800_000_000.0)  # the clock stands still: no window closes
    records = [_record(i) for i in range(n)]  # distinct dicts, as the pipeline makes them
    costs = []
    for _ in range(repeats):
        start = time.process_time()
        for record in records:
            tele.publish(record)
        costs.append((time.process_time() - start) / n)
        tele.agg.close(0.0, 1.0)  # drop the window (not measured)
    return statistics.median(costs)


def window_close_cost(window_s: float, fps: float = 30.0, windows: int = 8) -> float:
    """CPU seconds of closing one window of ``window_s`` at ``fps`` (fold, percentiles, system
    sample, drift, JSON, status file); the median of the windows after the first (imports)."""
    camera = [1_800_000_000.0]
    tele = _sink(window_s, lambda: camera[0])
    records = [_record(i) for i in range(int(window_s * fps) - 1)]
    costs = []
    for _ in range(windows):
        for record in records:
            tele.publish(record)
            camera[0] += 1 / fps
        camera[0] = tele._end  # exactly the window's end: the next roll closes it
        start = time.process_time()
        tele.roll(camera[0])
        costs.append(time.process_time() - start)
    return statistics.median(costs[1:])


def cpu_overhead(frames: int, window_s: float, fps: float = 30.0, package: Path = PACKAGE) -> None:
    # 1. accounting: the frame path and a window's close, each measured alone
    direct = frame_path_cost()
    close_s = window_close_cost(window_s, fps)
    per_frame = direct + close_s / (window_s * fps)  # one close per window_s * fps frames
    # 2. the whole loop: blocks with and without telemetry interleaved in one run
    base, tele = loop_blocks(frames, window_s, fps, package=package)
    print(f"model: {package.name}")
    ratios = [t / b_ for b_, t in zip(base, tele, strict=True)]
    b, r = statistics.median(base) / 200, statistics.median(ratios)
    total = sum(tele) / sum(base)  # every block: window closes included
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    spread = statistics.quantiles(base, n=4)
    print(f"window {window_s:g} s at {fps:g} fps (camera clock); load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'per-frame accounting':<44}{'CPU us':>10}{'% of frame':>12}")
    print(f"{'pipeline frame, results discarded (median)':<44}{b * 1e6:>10.1f}{100.0:>12.1f}")
    print(
        f"{'TelemetrySink.publish (frame path)':<44}{direct * 1e6:>10.2f}{100 * direct / b:>12.2f}"
    )
    print(f"{'one window close, per window':<44}{close_s * 1e6:>10.0f}")
    print(f"{'  the same per frame':<44}{close_s / (window_s * fps) * 1e6:>10.2f}"
          f"{100 * close_s / (window_s * fps) / b:>12.2f}")  # fmt: skip
    print(f"{'telemetry per frame (both)':<44}{per_frame * 1e6:>10.2f}{100 * per_frame / b:>12.2f}"
          "   (goal <= 2 %)")  # fmt: skip
    print(
        f"\nwhole loop, one run of {frames} frames in blocks of 200, telemetry in every other"
        f" (ABBA), {len(ratios)} pairs; baseline block quartiles "
        f"{spread[0] / 200 * 1e6:.1f} .. {spread[2] / 200 * 1e6:.1f} us/frame:"
    )
    print(
        f"  overhead {100 * (total - 1):+.2f} % (all blocks' CPU, window closes included); "
        f"median of per-pair ratios {100 * (r - 1):+.2f} % (quartiles {100 * (q1 - 1):+.2f} % "
        f".. {100 * (q3 - 1):+.2f} %)"
    )
    print(f"  at {fps:g} fps telemetry costs {per_frame * fps * 100:.3f} % of one core")


def bytes_per_day(window_s: float = 60.0, fps: float = 30.0, windows: int = 5) -> None:
    clock = [1_800_000_000.0]
    out = Counting()
    refs, primary = references(str(PACKAGE))
    tele = TelemetrySink(
        TelemetryConfig(window_s=window_s, data_dir=tempfile.mkdtemp(prefix="bench-telemetry-")),
        IDENT,
        out,
        references=refs,
        primary_model=primary,
        clock=lambda: clock[0],
        timer=False,
    )
    labels = list(refs["inspect-primary"])
    for i in range(int(windows * window_s * fps)):
        tele.publish(
            {
                "type": "result",
                "frame": i,
                "top": [{"label": labels[i % 4], "score": 0.9}],
                "model": "inspect-primary",
                "version": "1.0.0",
                "backend": "onnxruntime",
                "degraded": False,
                "ms": {"capture": 1.0, "pre": 0.4, "infer": 2.0 + (i % 7) / 10, "post": 0.1},
            }
        )
        clock[0] += 1 / fps
    tele.roll(clock[0] + 1)
    sizes = [len(m) for m in out.messages if b'"type":"window"' in m]
    topic = len(f"edgekiln/{IDENT.site}/{IDENT.device}/windows")
    framing = 2 + 2 + topic + 2 + 4  # fixed header, topic length + topic, packet id, PUBACK
    per_window = statistics.mean(sizes) + framing
    per_day = per_window * 86400 / window_s
    print(f"\nwindow message: {statistics.mean(sizes):.0f} B JSON + {framing} B MQTT framing")
    print(f"per day at {window_s:g} s windows: {per_day / 1e6:.2f} MB (goal: <= 5 MB)")


def ingest_rate(count: int, postgres: bool) -> None:
    from image.fleet.store import Store
    from tests.fleet.ingester import IngestProcess
    from tests.fleet.postgres import postgres_cluster
    from tests.fleet.simulate import device_windows, publish_all
    from tests.inference.mqtt_broker import Broker

    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    template = device_windows(0, tmp, windows=1)[0]
    messages = []
    for i in range(count):
        m = dict(template)
        device = f"dev-{i % 20:04d}"  # 20 publishing clients
        m.update(id=f"{device}:w:{i}", device=device, ts_start=i)
        messages.append(m)
    broker = Broker(tmp / "broker")
    broker.start()
    dbs = [("sqlite", str(tmp / "fleet.db"))]
    cluster = postgres_cluster() if postgres else None
    if cluster is not None:
        dbs.append(("postgresql", cluster.__enter__()))
    try:
        print(f"\n{'store':<12}{'messages':>10}{'msg/s':>10}{'x needed (16.7/s)':>20}")
        for name, db in dbs:
            # A group per store: a stopped member's session would keep receiving its share.
            ing = IngestProcess(
                broker.port, db, f"bench-{name}", tmp / f"{name}.log", "--group", f"bench-{name}"
            )
            t0 = time.monotonic()
            publish_all(broker.port, messages)
            deadline = time.monotonic() + 600
            try:
                while True:
                    store = Store.open(db)
                    n = store.counts()["windows"]
                    store.close()
                    if n >= count:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name}: only {n} of {count} stored in 600 s")
                    time.sleep(0.05)
            finally:
                ing.stop()
            seconds = time.monotonic() - t0
            rate = count / seconds
            print(f"{name:<12}{count:>10}{rate:>10.0f}{rate / (1000 / 60):>20.0f}")
    finally:
        if cluster is not None:
            cluster.__exit__(None, None, None)
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=36000)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--ingest", type=int, default=5000)
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--only", choices=("cpu", "bytes", "ingest"), default=None)
    ap.add_argument("--control", action="store_true", help="whole loop with a do-nothing sink")
    ap.add_argument(
        "--mobilenet",
        action="store_true",
        help="the CPU figures on a MobileNetV2-shaped classifier (224x224, 7-12 ms a frame: "
        "the class of model an appliance runs) instead of the 0.2 ms reference model",
    )
    args = ap.parse_args()
    package = PACKAGE
    if args.mobilenet:
        sys.path.insert(0, str(REPO / "tools"))
        from bench_models import mobilenet_package

        package = mobilenet_package(Path(tempfile.mkdtemp(prefix="bench-tele-")) / "mnv2", 64, 1)
    if args.control:
        base, tele = loop_blocks(args.frames, args.window, control=True)
        ratios = [t / b for b, t in zip(base, tele, strict=True)]
        print(f"control (a sink doing nothing in every other block): all blocks "
              f"{100 * (sum(tele) / sum(base) - 1):+.2f} %, median per-pair ratio "
              f"{100 * (statistics.median(ratios) - 1):+.2f} %")  # fmt: skip
        return
    if args.only in (None, "cpu"):
        cpu_overhead(args.frames, args.window, package=package)
    if args.only in (None, "bytes"):
        bytes_per_day()
    if args.only in (None, "ingest"):
        ingest_rate(args.ingest, args.postgres)


if __name__ == "__main__":
    main()
