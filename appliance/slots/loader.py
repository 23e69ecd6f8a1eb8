"""The loader interface, and the generic back end for loaders driven by an environment.

Every back end answers :class:`Loader`: read the :class:`~appliance.slots.state.BootState`,
and perform the state machine's transitions. Environment-driven loaders (GRUB, U-Boot, the
plain-file development back end) share :class:`EnvLoader`: a *store* reads and writes raw
variables (with its own redundancy), a *codec* maps them to and from a BootState exactly as
the loader's boot script interprets them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from appliance.slots import state as sm
from appliance.slots.state import SAFE_DEFAULT, BootState, Slot, parse_slot

log = logging.getLogger(__name__)


class Loader(Protocol):
    """What the installer, the agent and the CLI need from a boot loader."""

    name: str

    def read(self) -> BootState:
        """The loader's current record (a safe default when its environment is unusable)."""
        ...

    def deactivate(self, slot: Slot) -> None:
        """Make ``slot`` unbootable before it is written."""
        ...

    def begin_try(self, slot: Slot) -> None:
        """Boot ``slot`` once at the next boot."""
        ...

    def commit(self, slot: Slot) -> None:
        """Make the booted ``slot`` the default."""
        ...

    def mark_bad(self, slot: Slot) -> None:
        """Make ``slot`` unbootable (failed its try)."""
        ...

    def describe(self) -> str:
        """Where the loader's state lives, for messages."""
        ...


class EnvStore(Protocol):
    """Raw variables of a loader environment, with the loader's own redundancy."""

    def read_candidates(self) -> list[dict[str, str] | None]:
        """Copies in the order the boot script tries them; None for unusable ones."""
        ...

    def write(self, variables: Mapping[str, str]) -> None:
        """Persist ``variables`` durably (every copy)."""
        ...

    def describe(self) -> str: ...

    # Optional: ``storable(name) -> bool``, whether the loader can hold a variable of that
    # name; the others are dropped on write (see EnvLoader._write).


class Codec(Protocol):
    """How one boot script reads the state from its variables."""

    def valid(self, variables: Mapping[str, str]) -> bool:
        """Whether the boot script accepts this copy (else it tries the next one)."""
        ...

    def decode(self, variables: Mapping[str, str]) -> BootState: ...

    def encode(self, state: BootState) -> dict[str, str]: ...


class EkCodec:
    """The ``ek_*`` variables that grub.cfg and the development back end use.

    ``ek_committed`` = A|B (a copy without it is invalid), ``ek_try`` = A|B|empty,
    ``ek_tries_left`` = 1|0, ``ek_bad`` = the bad slots (informational, no loader reads it).
    """

    COMMITTED = "ek_committed"
    TRY = "ek_try"
    TRIES_LEFT = "ek_tries_left"
    BAD = "ek_bad"

    def valid(self, variables: Mapping[str, str]) -> bool:
        return variables.get(self.COMMITTED) in ("A", "B")

    def decode(self, variables: Mapping[str, str]) -> BootState:
        committed = parse_slot(variables.get(self.COMMITTED, "")) or SAFE_DEFAULT
        raw_try = variables.get(self.TRY, "")
        trying: Slot | None = raw_try if raw_try in ("A", "B") else None  # type: ignore[assignment]
        if trying == committed:
            trying = None
        tries = 1 if trying is not None and variables.get(self.TRIES_LEFT) == "1" else 0
        bad = frozenset(s for s in sm.SLOTS if s in variables.get(self.BAD, "") and s != committed)
        return BootState(committed, trying, tries, bad)

    def encode(self, state: BootState) -> dict[str, str]:
        return {
            self.COMMITTED: state.committed,
            self.TRY: state.trying or "",
            self.TRIES_LEFT: str(state.tries_left),
            self.BAD: "".join(sorted(state.bad)),
        }


class EnvLoader:
    """A loader whose state is a set of environment variables read by its boot script.

    Each transition is a read-modify-write; with ``lock_path`` it holds an exclusive
    ``flock`` on that file meanwhile (the agent, the CLI and the TUI may act at once; for
    U-Boot the lock is libubootenv's own, so ``fw_setenv`` waits too).
    """

    def __init__(
        self, name: str, store: EnvStore, codec: Codec, lock_path: Path | None = None
    ) -> None:
        self.name = name
        self.store = store
        self.codec = codec
        self.lock_path = lock_path

    def describe(self) -> str:
        return self.store.describe()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _current(self) -> tuple[BootState, dict[str, str]]:
        candidates = [c for c in self.store.read_candidates() if c is not None]
        for variables in candidates:
            if self.codec.valid(variables):
                return self.codec.decode(variables), dict(variables)
        # No copy holds our state (e.g. a fresh U-Boot environment): keep its other variables.
        return BootState(), dict(candidates[0]) if candidates else {}

    def read(self) -> BootState:
        return self._current()[0]

    def write(self, new: BootState) -> None:
        """Store ``new``, keeping variables that are not ours (in place, like grub-editenv)."""
        with self._locked():
            self._write(new)

    def _write(self, new: BootState) -> None:
        _, variables = self._current()
        variables.update(self.codec.encode(new))
        storable = getattr(self.store, "storable", None)
        if storable is not None:
            dropped = sorted(name for name in variables if not storable(name))
            if dropped:
                # Keeping them would make every write fail, and with it every install and
                # commit: the loader cannot use them anyway.
                log.warning(
                    "%s: dropped variables the loader cannot store: %s",
                    self.store.describe(),
                    ", ".join(repr(n) for n in dropped),
                )
                variables = {k: v for k, v in variables.items() if k not in dropped}
        self.store.write(variables)

    def _apply(self, transition: Callable[[BootState, Slot], BootState], slot: Slot) -> None:
        with self._locked():
            self._write(transition(self.read(), slot))

    def deactivate(self, slot: Slot) -> None:
        self._apply(sm.deactivate, slot)

    def begin_try(self, slot: Slot) -> None:
        self._apply(sm.begin_try, slot)

    def commit(self, slot: Slot) -> None:
        self._apply(sm.commit, slot)

    def mark_bad(self, slot: Slot) -> None:
        self._apply(sm.mark_bad, slot)
