"""``appliance``: the command the device runs (agent, self-test, install, slots, TUI)."""

from __future__ import annotations

from typing import NoReturn

import click

from appliance import __version__
from appliance._lazycli import LazyGroup, debug_option, run
from appliance.errors import ApplianceError

# Each sub-package owns its command module; add one line here per command.
COMMANDS: dict[str, str] = {
    "info": "appliance.info_cli:info",
    "slots": "appliance.slots.cli:slots",
    "agent": "appliance.supervisor.cli:agent",
    "agent-exited": "appliance.supervisor.exit_cli:agent_exited",
    "install": "appliance.ota.cli:install",
    "selftest": "appliance.inference.cli:selftest",
    "run": "appliance.inference.cli:run",
    "backends": "appliance.inference.cli:backends",
    "bundle": "appliance.bundle.cli:bundle",
    "tui": "appliance.tui.cli:tui",
    "update": "appliance.ota.fetch_cli:update",
    "usb-update": "appliance.usb_update:usb_update",
    "api": "appliance.api.cli:api",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
@debug_option
def cli() -> None:
    """edgekiln device runtime: inference agent, self-test, updates, slots and technician TUI."""


def main() -> NoReturn:
    """Console-script entry point."""
    run(cli, (ApplianceError, OSError))


if __name__ == "__main__":
    main()
