"""Start -> first painted status screen of ``appliance tui``, against a bare Textual app.

Each run is a fresh Python process (imports included), headless, that exits right after the
status screen painted its figures (``TechnicianApp(exit_after_paint=True)``); the baseline is a
minimal Textual app that exits after its first paint, measured in the same way in the same run.
The demo device is built once beforehand (its build time is reported separately).

    .venv/bin/python tools/bench_tui.py [--runs 5] [--model DIR]
"""

from __future__ import annotations

import argparse
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

TUI = """
import sys
from pathlib import Path
from appliance.tui.demo import build_demo, DEMO_EPOCH
from appliance.tui.app import TechnicianApp
device = build_demo(Path(sys.argv[1]), Path(sys.argv[2]), now=DEMO_EPOCH)
app = TechnicianApp(device, clock=lambda: DEMO_EPOCH, live=False, exit_after_paint=True)
app.run(headless=True)
"""

TUI_PREBUILT = """
import sys
from pathlib import Path
from appliance.device import Device, load_device_config
from appliance.tui.app import TechnicianApp
root = Path(sys.argv[1])
config = load_device_config(root / "etc/edgekiln/device.json")
device = Device(config=config, data_dir=root / "data", loader_spec=f"grub:{root}/boot/efi",
                booted_override="A", keyring_path=root / "etc/edgekiln/keyring.json",
                sys_root=root, usb_globs=(str(root / "usb"),), demo=True)
TechnicianApp(device, clock=lambda: 1767225600, live=False, exit_after_paint=True).run(
    headless=True)
"""


def timed(code: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, *args], check=True, timeout=120)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, help="model package (default: reference model)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from appliance.tui.demo import find_reference_model

    model = args.model or find_reference_model()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        build = timed(TUI, str(root), str(model))  # first run builds the demo (and the video)
        rows = {"bare Textual app": BARE, "appliance tui (prebuilt demo)": TUI_PREBUILT}
        results: dict[str, list[float]] = {name: [] for name in rows}
        results["appliance tui --demo (rebuild)"] = []
        for _ in range(args.runs):
            for name, code in rows.items():
                results[name].append(timed(code, str(root)))
            results["appliance tui --demo (rebuild)"].append(timed(TUI, str(root), str(model)))
    base = statistics.median(results["bare Textual app"])
    print(f"model: {model}; first demo build + paint: {build:.2f} s; runs: {args.runs}")
    print(f"{'case':<34} {'median s':>9} {'min s':>7} {'x bare':>7}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:<34} {med:>9.3f} {min(values):>7.3f} {med / base:>7.2f}")


if __name__ == "__main__":
    main()
