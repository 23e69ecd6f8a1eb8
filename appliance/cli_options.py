"""The click options every device command shares: slot loader, booted slot, data partition, keyring.

One declaration each, so the names, environment variables and defaults cannot drift between
``appliance install``, ``appliance agent``, ``appliance slots``, ``appliance bundle verify`` and
``appliance tui``. Each takes the help text where the meaning differs per command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from appliance.bundle.keyring import DEVICE_KEYRING

F = TypeVar("F", bound=Callable[..., Any])

LOADER_HELP = (
    "grub:ESP_MOUNT, uboot:FW_ENV_CONFIG, nvbootctrl[:RECORD] or file:PATH (default: detected)."
)
BOOTED_HELP = "The running slot (default: edgekiln.slot= in /proc/cmdline)."


def loader_option(help: str = LOADER_HELP) -> Callable[[F], F]:
    """``--loader SPEC`` (``$EDGEKILN_SLOTS``), passed as ``loader_spec``."""
    return click.option("--loader", "loader_spec", envvar="EDGEKILN_SLOTS", help=help)


def booted_option(help: str = BOOTED_HELP) -> Callable[[F], F]:
    """``--booted A|B`` (``$EDGEKILN_BOOTED_SLOT``)."""
    return click.option(
        "--booted", type=click.Choice(["A", "B"]), envvar="EDGEKILN_BOOTED_SLOT", help=help
    )


def data_dir_option(help: str, *, envvar: str | None = "EDGEKILN_DATA") -> Callable[[F], F]:
    """``--data-dir PATH`` (``$EDGEKILN_DATA``), the data partition's mount point."""
    return click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar=envvar, help=help
    )


def keyring_option(help: str | None = None) -> Callable[[F], F]:
    """``--keyring FILE``, the keyring baked into the image, passed as ``keyring_path``."""
    return click.option(
        "--keyring",
        "keyring_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEVICE_KEYRING,
        show_default=True,
        help=help,
    )
