"""``appliance update run`` (one pass of the update agent) and ``appliance update status``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from appliance import cli_options


def site_of(data_dir: Path) -> str | None:
    """The site name set at provisioning or in the TUI (``DATA/edgekiln/site``), if any."""
    try:
        return (data_dir / "edgekiln" / "site").read_text().strip() or None
    except OSError:
        return None


@click.command("run")
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="update.json (default $EDGEKILN_UPDATE_CONFIG or /etc/edgekiln/update.json).",
)  # fmt: skip
@cli_options.data_dir_option("Data partition mount: agent state, downloads, events.")
@cli_options.loader_option()
@cli_options.booted_option()
@cli_options.keyring_option()
@click.option("--slot", "slots", multiple=True, help="Slot device or image: A=PATH / B=PATH.")
@click.option("--now", "force", is_flag=True, help="Ignore the backoff after failures.")
@click.option("--reboot-policy", type=click.Choice(["window", "now", "manual"]),
              help="Override update.json's reboot policy.")  # fmt: skip
def run(
    config_path: Path | None, data_dir: Path | None, loader_spec: str | None, booted: str | None,
    keyring_path: Path, slots: tuple[str, ...], force: bool, reboot_policy: str | None,
) -> None:  # fmt: skip
    """One pass: poll the channel, download, install, reboot per policy (the timer runs it)."""
    import msgspec

    from appliance.device import Device
    from appliance.ota.agent import Context
    from appliance.ota.agent import run as run_pass
    from appliance.ota.agent_config import load_update_config
    from appliance.ota.cli import _slot_paths
    from appliance.slots.state import parse_slot

    device = Device.from_env(data_dir)
    config = load_update_config(config_path)
    if reboot_policy is not None:
        config = msgspec.structs.replace(config, reboot=reboot_policy)
    if "unknown" in (device.config.product, device.config.target):
        raise click.UsageError("this device's product/target are unknown (device.json)")
    device = Device(
        device.config, device.data_dir, loader_spec or device.loader_spec,
        booted or device.booted_override,
    )  # fmt: skip
    slot = parse_slot(booted) if booted else device.booted()
    assert slot is not None

    def policy():  # type: ignore[no-untyped-def]
        from appliance.bundle import Policy, effective_keyring
        from appliance.ota.clock import trusted_now
        from appliance.state import security_floor

        return Policy(
            keyring=effective_keyring(keyring_path, device.data_dir),
            product=device.config.product, target=device.config.target,
            min_security_version=security_floor(device.data_dir),
            trusted_now=trusted_now(device.data_dir),  # docs/decisions.md §6
        )  # fmt: skip

    ctx = Context(
        config=config, data_dir=device.data_dir, tuf_root=Path(config.tuf_root),
        product=device.config.product, target=device.config.target,
        version=device.config.version, device_id=device.device_id(),
        site=site_of(device.data_dir), policy=policy, loader=device.loader(), booted=slot,
        slots=_slot_paths(slots), reboot=device.reboot,  # type: ignore[arg-type]
    )  # fmt: skip
    outcome = run_pass(ctx, force=force)
    click.echo(outcome)
    if outcome.endswith(("-failed", "-interrupted", "-refused", "-oversize", "no-space")):
        sys.exit(75)


@click.command()
@cli_options.data_dir_option("Data partition mount (agent state).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="The raw state file.")
def status(data_dir: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Channel, last poll, pending release, bytes downloaded, next window, last outcome."""
    import msgspec

    from appliance.device import Device
    from appliance.ota import agent_state
    from appliance.ota.agent_status import update_status

    device = Device.from_env(data_dir)
    if as_json:
        click.echo(msgspec.json.encode(agent_state.load(device.data_dir)).decode())
        return
    rows = update_status(device.data_dir, time.time(), config_path).rows
    for name, value in rows:
        click.echo(f"{name:17} {value}")
