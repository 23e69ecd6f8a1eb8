"""``appliance agent``: health gate for a tried slot, then supervise the inference worker."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from pathlib import Path

import click

from appliance import cli_options

log = logging.getLogger(__name__)


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pipeline config, JSON or TOML (default: DATA/edgekiln/pipeline.json).",
)
@cli_options.loader_option()
@cli_options.booted_option()
@cli_options.data_dir_option("Data partition mount (default: device.json's data_dir, /data).")
@click.option("--service", "services", multiple=True, help="Unit that must be active (repeat).")
@click.option(
    "--health-limit", type=int, help="Reference images checked (default: device.json, 16)."
)
@click.option(
    "--budget-factor", type=float, help="Latency budget factor (default: device.json, 1.0)."
)
@click.option("--no-gate", is_flag=True, help="Skip the health gate (development).")
def agent(
    config_path: Path | None,
    loader_spec: str | None,
    booted: str | None,
    data_dir: Path | None,
    services: tuple[str, ...],
    health_limit: int | None,
    budget_factor: float | None,
    no_gate: bool,
) -> None:
    """Run the device: commit or roll back a tried slot, then keep the pipeline alive."""
    from appliance.device import Device
    from appliance.inference.pipeline import load_config
    from appliance.supervisor.pipeline_worker import pipeline_target, policy_for
    from appliance.supervisor.sdnotify import Notifier
    from appliance.supervisor.supervisor import Supervisor

    device = Device.from_env(data_dir)  # device.json fills in what the options leave open
    # the worker's telemetry reads its device layer from here (appliance/telemetry/settings.py)
    os.environ.setdefault("EDGEKILN_DATA", str(device.data_dir))
    _provision(device.data_dir)
    config_path = config_path or device.pipeline_config
    health = device.config.health
    limit = health_limit or int(health.get("reference_count", 16))
    factor = budget_factor or float(health.get("budget_factor", 1.0))
    cfg = load_config(config_path)
    if not no_gate:
        gate = GateOptions(services, limit, factor, device.config.backend)
        _gate(cfg.model, loader_spec, booted, device.data_dir, gate)
    events_path = device.events_path

    def on_event(event: dict[str, object]) -> None:
        try:
            events_path.parent.mkdir(parents=True, exist_ok=True)
            with events_path.open("a") as handle:
                handle.write(json.dumps(event, default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())  # events are rare and must survive a power cut
        except OSError as exc:  # the event log must never stop supervision
            log.warning("cannot append to %s: %s", events_path, exc)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    notifier = Notifier()
    supervisor = Supervisor(
        pipeline_target(config_path),
        policy_for(notifier.watchdog_s),
        notifier=notifier,
        on_event=on_event,
    )
    supervisor.run(stop)


def _provision(data: Path) -> None:
    """Apply a provisioning folder dropped on data (appliance/telemetry/provision.py)."""
    from appliance.errors import ApplianceError
    from appliance.telemetry.provision import apply_pending

    try:
        apply_pending(data)
    except (ApplianceError, OSError) as exc:  # never stops the device; the folder stays
        log.error("provisioning not applied: %s", exc)


@dataclasses.dataclass(frozen=True)
class GateOptions:
    """What the health check runs: units that must be active, reference subset, budget, back end."""

    services: tuple[str, ...]
    limit: int
    budget_factor: float
    backend: str | None


def _gate(
    package: str, loader_spec: str | None, booted: str | None, data_dir: Path, gate: GateOptions
) -> None:
    from appliance.slots.booted import booted_slot
    from appliance.slots.config import open_loader
    from appliance.slots.errors import BootedSlotUnknown
    from appliance.slots.state import parse_slot
    from appliance.supervisor.health import health_gate, run_health_check, systemctl_reboot

    try:
        slot = parse_slot(booted) if booted else booted_slot()
    except BootedSlotUnknown as exc:
        log.warning("health gate skipped: %s", exc)
        return
    assert slot is not None

    def reboot() -> None:
        # Said before the reboot is requested: afterwards the console may already be gone.
        click.echo(f"health gate: slot {slot} failed; rebooting into the committed slot", err=True)
        systemctl_reboot()

    outcome = health_gate(
        open_loader(loader_spec),
        slot,
        data_dir,
        lambda: run_health_check(
            Path(package),
            services=gate.services,
            backend=gate.backend,
            limit=gate.limit,
            budget_factor=gate.budget_factor,
        ),
        reboot,
    )
    if outcome != "failed":
        click.echo(f"health gate: slot {slot} {outcome}", err=True)
    if outcome == "failed":
        raise SystemExit(1)  # rebooting into the committed slot
