"""``kiln``: the build-host command (build, freeze, bundle, keys, models, flash, inspect)."""

from __future__ import annotations

from typing import NoReturn

import click

from appliance._lazycli import LazyGroup, debug_option, run
from appliance.errors import ApplianceError
from image import __version__
from image.errors import BuildError

# Each subpackage owns its command module; add one line here per command.
COMMANDS: dict[str, str] = {
    "vm": "image.vm.cli:vm",
    "build": "image.build.cli:build",
    "inspect": "image.inspect_cli:inspect",
    "flash": "image.flash_cli:flash",
    "freeze": "image.freeze.cli:freeze",
    "keys": "image.release.cli:keys",
    "bundle": "image.release.cli:bundle",
    "publish": "image.release.cli:publish",
    "rollout": "image.release.rollout_cli:rollout",
    "model": "image.model.cli:model",
    "fleet": "image.fleet.cli:fleet",
    "discover": "image.lan.cli:discover",
    "pair": "image.lan.cli:pair",
    "status": "image.lan.cli:status",
    "push": "image.lan.cli:push",
    "diag": "image.lan.cli:diag",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kiln")
@debug_option
def cli() -> None:
    """edgekiln builder: recipes to signed A/B device images, update bundles and keys."""


def main() -> NoReturn:
    """Console-script entry point."""
    run(cli, (BuildError, ApplianceError, OSError))


if __name__ == "__main__":
    main()
