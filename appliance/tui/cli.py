"""``appliance tui [--demo]``: the technician's console app."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click


@click.command()
@click.option(
    "--demo", is_flag=True, help="Run against a self-contained demo device in a temp dir."
)
@click.option(
    "--demo-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Build (or reuse) the demo device here instead of a temp dir (implies --demo).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEKILN_DATA",
    help="Data partition mount (default: device.json's data_dir, /data).",
)
def tui(demo: bool, demo_dir: Path | None, data_dir: Path | None) -> None:
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
            TechnicianApp(device, clock=lambda: built).run()
        return
    TechnicianApp(Device.from_env(data_dir)).run()
