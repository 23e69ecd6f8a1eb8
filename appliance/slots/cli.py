"""``appliance slots status|mark-good|mark-bad|rollback|cancel|deadline``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance import cli_options
from appliance.slots.state import SLOTS, Slot, parse_slot

loader_option = cli_options.loader_option()
booted_option = cli_options.booted_option()
data_option = cli_options.data_dir_option(
    "Data partition mount: install record and anti-rollback floor (default: device.json)."
)


def _data(value: Path | None) -> Path:
    """The data partition: the option, else ``$EDGEKILN_DATA`` / device.json (``/data``)."""
    from appliance.device import Device

    return Device.from_env(value).data_dir


def _booted(value: str | None) -> Slot:
    from appliance.slots.booted import booted_slot

    if value:
        slot = parse_slot(value)
        assert slot is not None
        return slot
    return booted_slot()


@click.group()
def slots() -> None:
    """Show and change the A/B slot state (the boot loader's environment)."""


@slots.command()
@loader_option
@booted_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(loader_spec: str | None, booted: str | None, as_json: bool) -> None:
    """Each slot's state, and which one boots next."""
    from appliance.slots.config import open_loader
    from appliance.slots.errors import BootedSlotUnknown
    from appliance.slots.state import loader_choice

    loader = open_loader(loader_spec)
    state = loader.read()
    try:
        running: Slot | None = _booted(booted)
    except BootedSlotUnknown:
        running = None
    next_slot = loader_choice(state)[0]
    data = {
        "loader": loader.describe(),
        "booted": running,
        "next_boot": next_slot,
        "slots": {s: state.status(s) for s in SLOTS},
        "tries_left": state.tries_left,
    }
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    click.echo(f"loader: {data['loader']}")
    for slot in SLOTS:
        marks = [
            m for m, on in (("booted", slot == running), ("next boot", slot == next_slot)) if on
        ]
        click.echo(f"  slot {slot}: {state.status(slot):9s} {', '.join(marks)}".rstrip())


@slots.command("mark-good")
@loader_option
@booted_option
@data_option
def mark_good(loader_spec: str | None, booted: str | None, data_dir: Path | None) -> None:
    """Commit the booted slot (the health gate does this by itself)."""
    from appliance.slots.config import open_loader
    from appliance.slots.control import commit_booted

    slot = _booted(booted)
    commit_booted(open_loader(loader_spec), slot, _data(data_dir))
    click.echo(f"slot {slot} committed")


@slots.command("mark-bad")
@click.argument("slot", required=False, type=click.Choice(["A", "B"]))
@loader_option
@booted_option
@data_option
def mark_bad(
    slot: str | None, loader_spec: str | None, booted: str | None, data_dir: Path | None
) -> None:
    """Mark SLOT (default: the booted one) not bootable; the committed slot is refused."""
    from appliance.slots.config import open_loader
    from appliance.slots.control import fail_booted

    target = parse_slot(slot) if slot else _booted(booted)
    assert target is not None
    fail_booted(open_loader(loader_spec), target, _data(data_dir))
    click.echo(f"slot {target} marked bad")


@slots.command()
@loader_option
@booted_option
@data_option
def rollback(loader_spec: str | None, booted: str | None, data_dir: Path | None) -> None:
    """Go back to the last committed slot, or try the previous release once.

    A pending update (installed, tried at the next boot) is cancelled; a slot running on trial
    is left (marked bad, the committed slot boots next). With nothing pending, the other slot
    is tried once, unless its security_version is below the anti-rollback floor.
    """
    from appliance.slots import control
    from appliance.slots.config import open_loader
    from appliance.slots.state import loader_choice

    loader = open_loader(loader_spec)
    running, data = _booted(booted), _data(data_dir)
    plan = control.plan_rollback(loader, running, data)
    state = control.rollback(loader, running, data)
    done = {
        "cancel": f"pending update cancelled: slot {plan.target} stays the next boot",
        "leave": f"slot {running} marked bad; next boot: slot {loader_choice(state)[0]}; reboot "
        "to switch",
        "previous": f"next boot: slot {loader_choice(state)[0]} (tried once); reboot to switch",
    }
    click.echo(done[plan.kind])


@slots.command()
@loader_option
@booted_option
@data_option
def cancel(loader_spec: str | None, booted: str | None, data_dir: Path | None) -> None:
    """Cancel the pending update (the slot the next boot would try is marked bad)."""
    from appliance.slots import control
    from appliance.slots.config import open_loader

    before = open_loader(loader_spec).read()
    running = _booted(booted)
    control.cancel_pending(open_loader(loader_spec), running, _data(data_dir))
    click.echo(
        f"pending update in slot {before.trying} cancelled; slot {running} stays the next boot"
    )


@slots.command("deadline")
@loader_option
@booted_option
@data_option
def deadline(loader_spec: str | None, booted: str | None, data_dir: Path | None) -> None:
    """Boot deadline of a tried slot: exit 0 if the booted slot is committed.

    Otherwise mark it bad and exit non-zero; edgekiln-trial-deadline.service then reboots
    (FailureAction), which returns to the committed slot.
    """
    from appliance.slots.config import open_loader
    from appliance.slots.trial import check_deadline

    click.echo(check_deadline(open_loader(loader_spec), _booted(booted), _data(data_dir)))
