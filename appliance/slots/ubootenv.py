"""The U-Boot environment: byte-compatible with U-Boot and libubootenv (``fw_printenv``).

One copy is ``crc32(data) | data``; with a redundant copy each is
``crc32(data) | flag | data``. ``data`` holds ``name=value\\0`` entries, an empty entry ends
them, the rest up to the copy's size is padding covered by the CRC. Like libubootenv for
files and block devices (incremental flags), a write goes to the copy that is *not* current,
with the current flag + 1, and is done in place with fsync: a torn write leaves a bad CRC in
that copy, and U-Boot and ``fw_printenv`` both keep using the other one.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from appliance.slots.errors import EnvFormatError, LoaderError


@dataclasses.dataclass(frozen=True)
class EnvCopy:
    """One copy: a file or block device, the offset of the environment in it and its size."""

    device: Path
    offset: int
    size: int


def parse_fw_env_config(text: str, source: str = "fw_env.config") -> list[EnvCopy]:
    """The copies listed in a fw_env.config (``device offset size [sector-size [count]]``)."""
    copies = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 3:
            raise EnvFormatError(f"{source}:{number}: expected 'device offset size', got {raw!r}")
        try:
            copies.append(EnvCopy(Path(fields[0]), int(fields[1], 0), int(fields[2], 0)))
        except ValueError as exc:
            raise EnvFormatError(f"{source}:{number}: bad number in {raw!r}") from exc
    if len(copies) not in (1, 2):
        raise EnvFormatError(f"{source}: needs one or two environment copies, found {len(copies)}")
    if len(copies) == 2 and copies[0].size != copies[1].size:
        raise EnvFormatError(f"{source}: both copies must have the same size")
    return copies


def _header(redundant: bool) -> int:
    return 5 if redundant else 4


def parse_copy(raw: bytes, redundant: bool) -> tuple[dict[str, str], int] | None:
    """(variables, flag) of one copy, or None if its CRC or layout is wrong."""
    head = _header(redundant)
    if len(raw) <= head + 1:
        return None
    (crc,) = struct.unpack_from("<I", raw, 0)
    data = raw[head:]
    if zlib.crc32(data) != crc:
        return None
    flag = raw[4] if redundant else 0
    variables: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        end = data.find(b"\0", pos)
        if end < 0:
            return None  # entry runs off the end: libubootenv refuses it too
        name, sep, value = data[pos:end].partition(b"=")
        if sep:
            variables[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos = end + 1
    if pos >= len(data):
        return None
    return variables, flag


def render_copy(variables: Mapping[str, str], size: int, redundant: bool, flag: int = 0) -> bytes:
    """One copy of ``size`` bytes: entries sorted by name as libubootenv writes them."""
    body = bytearray()
    flags_entry = None
    for name in sorted(variables, key=lambda n: n.encode()):
        if not name or "=" in name or "\0" in name or "\0" in variables[name]:
            raise EnvFormatError(f"U-Boot variable {name!r} has an empty name, '=' or NUL")
        entry = f"{name}={variables[name]}".encode() + b"\0"
        if name == ".flags":
            flags_entry = entry
        else:
            body += entry
    if flags_entry:
        body += flags_entry
    body += b"\0"
    usable = size - _header(redundant)
    if len(body) > usable:
        raise EnvFormatError(
            f"U-Boot environment needs {len(body)} bytes, more than the {usable} available; "
            "remove variables or enlarge the environment"
        )
    data = bytes(body) + b"\0" * (usable - len(body))
    head = struct.pack("<I", zlib.crc32(data))
    if redundant:
        head += bytes([flag & 0xFF])
    return head + data


def current_copy(flags: list[int | None]) -> int | None:
    """Index of the copy U-Boot uses (None: no valid copy); ``flags[i]`` None = bad CRC."""
    if len(flags) == 1:
        return 0 if flags[0] is not None else None
    first, second = flags
    if first is None:
        return None if second is None else 1
    if second is None:
        return 0
    if first == 0xFF and second == 0:
        return 1
    if second == 0xFF and first == 0:
        return 0
    return 1 if second > first else 0


def choose(raws: list[bytes]) -> dict[str, str] | None:
    """Variables of the copy U-Boot uses among one or two raw copies (None: none is valid)."""
    parsed = [parse_copy(raw, len(raws) == 2) for raw in raws]
    index = current_copy([p[1] if p else None for p in parsed])
    chosen = parsed[index] if index is not None else None
    return chosen[0] if chosen else None


#: libubootenv's default environment file (``fw_printenv -f``), beside fw_env.config.
INITIAL_ENV = "u-boot-initial-env"


class UBootEnvStore:
    """A U-Boot environment in one or two copies (files or block devices)."""

    def __init__(self, copies: list[EnvCopy], initial_env: Path | None = None) -> None:
        if len(copies) not in (1, 2):
            raise EnvFormatError("a U-Boot environment has one or two copies")
        self.copies = copies
        self.redundant = len(copies) == 2
        self.initial_env = initial_env

    @classmethod
    def from_config(cls, config: Path) -> UBootEnvStore:
        """Copies as listed in a fw_env.config; the default environment file beside it."""
        try:
            text = Path(config).read_text()
        except OSError as exc:
            raise LoaderError(f"cannot read {config}: {exc}") from exc
        return cls(parse_fw_env_config(text, str(config)), Path(config).parent / INITIAL_ENV)

    def _default_env(self) -> dict[str, str] | None:
        """The board's built-in environment (libubootenv's ``u-boot-initial-env``), if known."""
        if self.initial_env is None:
            return None
        try:
            text = self.initial_env.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise LoaderError(f"cannot read {self.initial_env}: {exc}") from exc
        variables: dict[str, str] = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and name and not name.startswith("#"):
                variables[name] = value
        return variables

    def describe(self) -> str:
        return "U-Boot environment " + ", ".join(f"{c.device}@{c.offset:#x}" for c in self.copies)

    def _read_raw(self, copy: EnvCopy) -> bytes:
        try:
            with copy.device.open("rb") as handle:
                handle.seek(copy.offset)
                return handle.read(copy.size)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise LoaderError(f"cannot read U-Boot environment {copy.device}: {exc}") from exc

    def _parsed(self) -> list[tuple[dict[str, str], int] | None]:
        return [parse_copy(self._read_raw(c), self.redundant) for c in self.copies]

    def read_candidates(self) -> list[dict[str, str] | None]:
        """The copy U-Boot would use; with none valid (never saved, or both garbled), U-Boot
        runs on its built-in default environment, which ``u-boot-initial-env`` describes."""
        chosen = choose([self._read_raw(c) for c in self.copies])
        if chosen is None:
            return [self._default_env()]
        return [chosen]

    def write(self, variables: Mapping[str, str]) -> None:
        """Write the non-current copy with the next flag (one copy: in place).

        An environment with no valid copy is written only if the board's default environment
        is known (its variables are then part of ``variables``, see :meth:`read_candidates`):
        a first save of edgekiln's variables alone would drop ``bootcmd`` and the rest.
        """
        if choose([self._read_raw(c) for c in self.copies]) is None and self._default_env() is None:
            where = self.initial_env or Path("/etc") / INITIAL_ENV
            raise LoaderError(
                f"{self.describe()} holds no saved environment and the board's default "
                f"environment {where} is missing: saving only edgekiln's variables would drop "
                "U-Boot's own (bootcmd, ...); install the U-Boot build's u-boot-initial-env "
                f"(make u-boot-initial-env) as {where}"
            )
        copy, block = self.plan(variables)
        self.put(copy, block)

    def plan(self, variables: Mapping[str, str]) -> tuple[EnvCopy, bytes]:
        """The copy the next write goes to, and its bytes."""
        parsed = self._parsed()
        index = current_copy([p[1] if p else None for p in parsed])
        if self.redundant:
            current = index if index is not None else 0
            target = 1 - current
            # Like libubootenv: the flag of a bad copy is its raw byte.
            chosen = parsed[current]
            raw_flag = chosen[1] if chosen is not None else self._raw_flag(current)
            flag = (raw_flag + 1) & 0xFF
        else:
            target, flag = 0, 0
        copy = self.copies[target]
        return copy, render_copy(variables, copy.size, self.redundant, flag)

    @staticmethod
    def put(copy: EnvCopy, block: bytes) -> None:
        """pwrite ``block`` into ``copy`` and fsync (in place: a torn write breaks its CRC)."""
        try:
            fd = os.open(copy.device, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, block, copy.offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise LoaderError(f"cannot write U-Boot environment {copy.device}: {exc}") from exc

    def _raw_flag(self, index: int) -> int:
        raw = self._read_raw(self.copies[index])
        return raw[4] if len(raw) > 4 else 0
