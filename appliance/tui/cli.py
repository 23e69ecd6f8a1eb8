"""``appliance tui [--demo]``: the technician's console app."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import click

from appliance import cli_options

LOG_NAME = "edgekiln-tui.log"


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Send log records to ``path`` instead of the terminal the app draws on."""
    root = logging.getLogger()
    saved = root.handlers[:]
    handler: logging.Handler
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError:
        handler = logging.NullHandler()  # read-only data: the action log is still attempted
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = saved
        handler.close()


@click.command()
@click.option(
    "--demo", is_flag=True, help="Run against a self-contained demo device in a temp dir."
)
@click.option(
    "--demo-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build (or reuse) the demo device here instead of a temp dir (implies --demo).",
)
@cli_options.data_dir_option("Data partition mount (default: device.json's data_dir, /data).")
@click.option(
    "--bench-first-paint",
    is_flag=True,
    hidden=True,
    help="Run headless and exit once the status is painted (tools/bench_tui.py).",
)
def tui(demo: bool, demo_dir: Path | None, data_dir: Path | None, bench_first_paint: bool) -> None:
    """Status, network, camera, model check, update from USB, slots and logs (keyboard only)."""
    from appliance.device import Device
    from appliance.tui.app import TechnicianApp

    if demo or demo_dir:
        from appliance.tui.demo import build_demo

        built = time.time()
        with tempfile.TemporaryDirectory(prefix="edgekiln-demo-") as tmp:
            device = build_demo(demo_dir or Path(tmp), now=built)
            # The demo's agent files are a snapshot: its clock stays at build time so the
            # status shows them as live rather than "no frames for N s".
            app = TechnicianApp(device, clock=lambda: built, exit_after_paint=bench_first_paint)
            with log_to_file(device.log_dir / LOG_NAME):
                app.run(headless=bench_first_paint)
        return
    device = Device.from_env(data_dir)
    with log_to_file(device.log_dir / LOG_NAME):
        TechnicianApp(device, exit_after_paint=bench_first_paint).run(headless=bench_first_paint)
