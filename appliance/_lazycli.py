"""A click group whose sub-commands are imported only when they are used.

``appliance --help`` and ``kiln --help`` stay fast and need only the core dependencies; each
sub-package owns its own command module (``appliance/bundle/cli.py`` and so on).
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import click


class LazyGroup(click.Group):
    """Resolve ``name -> "package.module:attribute"`` the first time a command is needed."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module_name, attr = self._lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):  # pragma: no cover - wiring error
                raise TypeError(f"{self._lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


def run(group: click.Group, handled: tuple[type[BaseException], ...]) -> NoReturn:
    """Run a CLI group; print our own errors in one line (traceback only with ``--debug``)."""
    debug = "--debug" in sys.argv[1:]
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except handled as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(int(getattr(exc, "exit_code", 1)))
    sys.exit(0)


def debug_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--debug``: show tracebacks and debug logs (read by :func:`run` from argv)."""
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        help="Show tracebacks and debug logs.",
    )(func)
