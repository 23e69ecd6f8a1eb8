"""Start -> first painted status screen of ``appliance tui``, against a bare Textual app.

Every run is a fresh process (imports included) that runs headless and exits once the status
screen painted its figures (``appliance tui --bench-first-paint``); the baseline is a minimal
Textual app that exits after its first paint, measured the same way in the same run. The demo
device is built once and then read as a device's files (``$EDGEKILN_DATA`` etc.); the
``--demo`` row builds a fresh demo in each run. ``--frozen DIR`` adds
the PyInstaller-frozen runtime (``DIR/appliance``) to the table.

    .venv/bin/python tools/bench_tui.py [--runs 5] [--model DIR] [--frozen DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE = """
from textual.app import App
from textual.widgets import Static
class Bare(App[None]):
    def compose(self):
        yield Static("hello")
    def on_mount(self):
        self.call_after_refresh(self.exit)
Bare().run(headless=True)
"""


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, timeout=120, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, help="model package (default: reference model)")
    parser.add_argument("--frozen", type=Path, help="a frozen runtime tree (holds ./appliance)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from appliance.tui.demo import find_reference_model

    model = args.model or find_reference_model()
    env = {**os.environ, "EDGEKILN_DEMO_MODEL": str(model)}
    source = [str(Path(sys.executable).with_name("appliance")), "tui", "--bench-first-paint"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        build = timed([*source, "--demo-dir", str(root)], env)
        # The device path: the demo's files as a device's, found through the environment.
        device_env = {
            **env,
            "EDGEKILN_DEVICE_CONFIG": str(root / "etc" / "edgekiln" / "device.json"),
            "EDGEKILN_SLOTS": f"grub:{root / 'boot' / 'efi'}",
            "EDGEKILN_BOOTED_SLOT": "A",
            "EDGEKILN_DATA": str(root / "data"),
        }
        cases = {
            "bare Textual app": ([sys.executable, "-c", BARE], env),
            "appliance tui (device state)": (source, device_env),
            "appliance tui --demo (builds it)": ([*source, "--demo"], env),
        }
        if args.frozen:
            frozen = [str(args.frozen / "appliance"), "tui", "--bench-first-paint"]
            cases["frozen appliance tui (device state)"] = (frozen, device_env)
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, (argv, case_env) in cases.items():
                results[name].append(timed(argv, case_env))
    base = statistics.median(results["bare Textual app"])
    print(f"model: {model}; first demo build + paint: {build:.2f} s; runs: {args.runs}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'case':<36} {'median s':>9} {'min s':>7} {'x bare':>7}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<36} {med:>9.3f} {min(values):>7.3f} {med / base:>7.2f}")


if __name__ == "__main__":
    main()
