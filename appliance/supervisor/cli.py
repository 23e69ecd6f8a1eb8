"""``appliance agent``: health gate for a tried slot, then supervise the inference worker."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import click

log = logging.getLogger(__name__)
DEFAULT_CONFIG = "/data/edgekiln/pipeline.json"


@click.command()
@click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Pipeline config (JSON or TOML).",
)
@click.option("--loader", "loader_spec", envvar="EDGEKILN_SLOTS", help="Slot loader spec.")
@click.option("--booted", type=click.Choice(["A", "B"]), envvar="EDGEKILN_BOOTED_SLOT")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="EDGEKILN_DATA",
    help="Data partition mount (update state, events).",
)
@click.option("--service", "services", multiple=True, help="Unit that must be active (repeat).")
@click.option("--health-limit", default=16, show_default=True, help="Reference images checked.")
@click.option("--budget-factor", default=1.0, show_default=True, help="Latency budget factor.")
@click.option("--no-gate", is_flag=True, help="Skip the health gate (development).")
def agent(
    config_path: Path,
    loader_spec: str | None,
    booted: str | None,
    data_dir: Path | None,
    services: tuple[str, ...],
    health_limit: int,
    budget_factor: float,
    no_gate: bool,
) -> None:
    """Run the device: commit or roll back a tried slot, then keep the pipeline alive."""
    from appliance.inference.pipeline import load_config
    from appliance.supervisor.pipeline_worker import pipeline_target, policy_for
    from appliance.supervisor.sdnotify import Notifier
    from appliance.supervisor.supervisor import Supervisor

    cfg = load_config(config_path)
    if not no_gate:
        _gate(cfg.model, loader_spec, booted, data_dir, services, health_limit, budget_factor)
    events_path = (data_dir / "edgekiln" / "events.jsonl") if data_dir else None

    def on_event(event: dict[str, object]) -> None:
        if events_path is not None:
            events_path.parent.mkdir(parents=True, exist_ok=True)
            with events_path.open("a") as handle:
                handle.write(json.dumps(event, default=str) + "\n")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor = Supervisor(
        pipeline_target(config_path),
        policy_for(config_path),
        notifier=Notifier(),
        on_event=on_event,
    )
    supervisor.run(stop)


def _gate(
    package: str,
    loader_spec: str | None,
    booted: str | None,
    data_dir: Path | None,
    services: tuple[str, ...],
    limit: int,
    budget_factor: float,
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
    outcome = health_gate(
        open_loader(loader_spec),
        slot,
        data_dir,
        lambda: run_health_check(
            Path(package), services=services, limit=limit, budget_factor=budget_factor
        ),
        systemctl_reboot,
    )
    click.echo(f"health gate: slot {slot} {outcome}", err=True)
    if outcome == "failed":
        raise SystemExit(1)  # rebooting into the committed slot
