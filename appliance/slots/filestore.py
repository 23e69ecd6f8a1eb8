"""The plain-file back end for development machines and simulations.

One ``key=value`` text file (the same ``ek_*`` variables as grub.cfg reads), replaced
atomically. No boot loader reads it: on a development machine the "boot" is
:func:`appliance.slots.state.loader_choice`, which models the loader scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from appliance.fsutil import atomic_write_bytes
from appliance.slots.errors import LoaderError
from appliance.slots.loader import EkCodec, EnvLoader


class FileStore:
    """Variables in one text file, one ``key=value`` per line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"slot state file {self.path}"

    def read_candidates(self) -> list[dict[str, str] | None]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return [None]
        except (OSError, UnicodeDecodeError) as exc:
            raise LoaderError(f"cannot read {self.path}: {exc}") from exc
        variables: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                variables[name.strip()] = value.strip()
        return [variables]

    def write(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            if "\n" in name or "=" in name or "\n" in value:
                raise LoaderError(f"variable {name!r} cannot be stored in {self.path}")
        text = "".join(f"{name}={value}\n" for name, value in variables.items())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, text.encode())
        except OSError as exc:
            raise LoaderError(f"cannot write {self.path}: {exc}") from exc


def file_loader(path: Path) -> EnvLoader:
    """The development back end: state in ``path``."""
    return EnvLoader("file", FileStore(path), EkCodec())
