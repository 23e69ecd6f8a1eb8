"""Benchmark frozen runtimes: size, build time cold and cached, start-up to first inference.

    .venv/bin/python tools/bench_freeze.py [--targets generic-x86-64,intel-openvino] [--opencv]
                                           [--model DIR] [--repeat 5] [--out DIR]

Each target is frozen as its recipe in recipes/ does by default (generic-x86-64: no OpenCV);
``--opencv`` adds generic-x86-64 with ``[runtime] extras = ["opencv"]`` (the opt-in). Sizes are
printed in MB and MiB, with the MiB of OpenCV (``cv2`` and its libraries) in each, and checked
against the size goal (150 MiB for generic-x86-64 and coral-usb-arm64, issue 21).
For each target it freezes once with an empty cache (cold) and once more with the same cache
(cached), then times ``appliance selftest --limit 1`` (process start to the first reference
inference and its check) for the frozen program against the same command run from the source tree
(``python -m appliance.cli``) in the same run, alternating, and prints the ratio frozen/source.
The model is the reference package (recipes/models/inspect-primary) if generated, else a tiny
real ONNX package made on the spot.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from image.freeze.runtime import FrozenRuntime, freeze_runtime, snapshot_sources  # noqa: E402

BACKEND = {"generic-x86-64": "onnxruntime", "intel-openvino": "openvino"}
MIB = 2**20
GOAL_MIB = {"generic-x86-64": 150, "coral-usb-arm64": 150}  # the default runtimes' size goal


def _model(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    ref = REPO / "recipes" / "models" / "inspect-primary"
    if (ref / "model.json").exists():
        # A private copy: the reference package may be regenerated while the benchmark runs.
        return Path(shutil.copytree(ref, tmp / "reference"))
    from tests.inference.fixtures import make_package

    return make_package(tmp / "tiny")


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _startup(rt: FrozenRuntime, backend: str, model: Path, repeat: int) -> tuple[float, float]:
    """Median seconds to the first reference inference: frozen, source tree."""
    args = ["selftest", "--model", str(model), "--backend", backend, "--limit", "1"]
    args += ["--budget-factor", "1000"]
    frozen_cmd = [str(rt.executable), *args]
    source_cmd = [sys.executable, "-m", "appliance.cli", *args]
    _time(frozen_cmd)  # warm the page cache for both before measuring
    _time(source_cmd)
    frozen, source = [], []
    for _ in range(repeat):
        frozen.append(_time(frozen_cmd))
        source.append(_time(source_cmd))
    return statistics.median(frozen), statistics.median(source)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="generic-x86-64,intel-openvino")
    ap.add_argument("--opencv", action="store_true", help="Also measure generic + opencv.")
    ap.add_argument("--model")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-freeze-") as tmp_s:
        tmp = args.out or Path(tmp_s)
        model = _model(args.model, tmp)
        # One snapshot of the sources for every build: the checkout may change meanwhile.
        sources = tmp / "sources"
        snapshot_sources(sources)
        runs: list[tuple[str, str, list[str]]] = [
            (t, BACKEND[t], []) for t in args.targets.split(",")
        ]
        if args.opencv:
            runs.append(("generic-x86-64", "onnxruntime", ["opencv"]))
        rows = []
        for target, backend, extras in runs:
            label = target + "".join(f"+{e}" for e in extras)
            cache = tmp / f"cache-{label}"
            cold, warm = (
                freeze_runtime(
                    target,
                    tmp / f"{n}-{label}",
                    cache_dir=cache,
                    extras=extras,
                    source_root=sources,
                )
                for n in ("cold", "warm")
            )
            assert warm.cached, "the second build must come from the cache"
            assert warm.digest == cold.digest
            frozen_s, source_s = _startup(cold, backend, model, args.repeat)
            top = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in list(cold.size.packages.items())[:4])
            rows.append((label, cold, warm, frozen_s, source_s, top))
        print(f"model: {model}   start-up = median of {args.repeat} runs of selftest --limit 1")
        head = f"{'runtime':28} {'MB':>7} {'MiB':>7} {'cv2 MiB':>7} {'goal':>9} {'cold s':>7}"
        head += f" {'cached s':>8} {'ratio':>6} {'frozen s':>8} {'source s':>8} {'f/s':>5}"
        print(head + "  largest packages (MB)")
        for label, cold, warm, frozen_s, source_s, top in rows:
            total = cold.size.total_bytes
            goal = GOAL_MIB.get(label)  # the default runtime only (not generic+opencv)
            met = f"<={goal} {'ok' if total <= goal * MIB else 'NO'}" if goal else "-"
            print(
                f"{label:28} {total / 1e6:7.1f} {total / MIB:7.1f} "
                f"{cold.size.packages.get('cv2', 0) / MIB:7.1f} {met:>9} {cold.seconds:7.1f} "
                f"{warm.seconds:8.2f} {warm.seconds / cold.seconds:6.3f} {frozen_s:8.3f} "
                f"{source_s:8.3f} {frozen_s / source_s:5.2f}  {top}"
            )


if __name__ == "__main__":
    main()
