"""Benchmark ``kiln build``: cold, cached and model-only rebuild times, image and slot sizes.

    .venv/bin/python tools/bench_build.py [--recipe recipes/generic-x86-64.toml] [--keep DIR]

Runs three builds of one recipe in a fresh cache directory (so the first is really cold: Debian
bootstrap, PyInstaller freeze, every stage), then the same recipe again (everything cached),
then a copy of the recipe directory whose primary model file has one byte changed (model-only
change). Prints each build's stage table and the ratios against the cold build (the issue's
goal: model-only <= 0.2 of cold).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KILN = Path(sys.executable).parent / "kiln"


def build(
    recipe: Path, out: Path, cache: Path, runtime: Path | None = None
) -> tuple[float, dict[str, object]]:
    start = time.monotonic()
    extra = ["--runtime", str(runtime)] if runtime else []
    subprocess.run(
        [str(KILN), "build", str(recipe), "-o", str(out), "--cache", str(cache), *extra],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.monotonic() - start
    return seconds, json.loads((out / "build-report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "generic-x86-64.toml")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep")
    parser.add_argument(
        "--reuse-cold",
        action="store_true",
        help="with --keep: take the cold build (and its time) from an earlier run",
    )
    parser.add_argument(
        "--pin-runtime",
        action="store_true",
        help="reuse the cold build's frozen runtime (--runtime) for the later builds, so that "
        "edits to appliance/ during the run do not re-freeze it",
    )
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    recipes = work / "recipes"
    shutil.copytree(args.recipe.resolve().parent, recipes, symlinks=True, dirs_exist_ok=True)
    recipe = recipes / args.recipe.name

    rows = []
    cold_report = work / "cold" / "build-report.json"
    if args.reuse_cold and cold_report.exists():
        # The cold figure of an earlier run with this --keep directory; one untimed build
        # brings the caches up to date with the current code first.
        report = json.loads(cold_report.read_text())
        cold = float(report["seconds"])
        build(recipe, work / "warm-up", cache)
    else:
        cold, report = build(recipe, work / "cold", cache)
    rows.append(("cold", cold, report))
    # the runtime the cold build froze (the only entry of this fresh cache's freeze folder)
    frozen = sorted((cache / "freeze").glob("*/appliance")) if args.pin_runtime else []
    if args.pin_runtime and not frozen:
        raise SystemExit(f"--pin-runtime: no frozen runtime under {cache / 'freeze'}")
    pinned = frozen[0] if frozen else None
    if pinned is not None:
        keep = work / "runtime"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(pinned, keep, symlinks=True)
        pinned = keep
    cached, report = build(recipe, work / "cached", cache, pinned)
    rows.append(("cached", cached, report))
    model = recipes / "models" / "inspect-primary" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01  # a retrained model, as far as the builder can tell
    model.write_bytes(bytes(data))
    model_only, report = build(recipe, work / "model-only", cache, pinned)
    rows.append(("model-only", model_only, report))

    print(f"{'build':<11} {'seconds':>8} {'ratio':>6}  stages rebuilt")
    for name, seconds, rep in rows:
        rebuilt = [s["name"] for s in rep["stages"] if not s["cached"]]  # type: ignore[index]
        print(f"{name:<11} {seconds:>8.1f} {seconds / cold:>6.2f}  {', '.join(rebuilt)}")
    image = Path(rows[0][2]["outputs"]["image"])  # type: ignore[index]
    slot = next(s for s in rows[0][2]["stages"] if s["name"] == "slot")  # type: ignore[union-attr]
    zst = Path(str(image) + ".zst")
    print(
        f"image {image.stat().st_size / 2**20:.0f} MiB apparent, "
        f"{image.stat().st_blocks * 512 / 2**20:.0f} MiB allocated, "
        f"{zst.stat().st_size / 2**20:.0f} MiB zstd; slot content {slot['size'] / 2**20:.0f} MiB"
    )
    for name, _s, rep in rows:
        print(f"\n{name}:")
        for s in rep["stages"]:  # type: ignore[index]
            print(f"  {s['name']:<9} {'hit ' if s['cached'] else 'miss'} {s['seconds']:>7.1f} s")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
