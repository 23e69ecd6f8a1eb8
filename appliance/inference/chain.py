"""The fallback chain: primary back end, other back ends, the fallback model, then degraded.

Each candidate is (model package, back end). :meth:`FallbackChain.next_runner` tries the
candidates in order from the current position and records an :class:`Event` with the reason
for every step, so the supervisor and the operator can see why the device runs what it runs.
When every candidate failed the chain is *degraded*: frames pass through without inference and
an ``alert`` event is raised once; :meth:`FallbackChain.reset` starts over (periodic retry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from appliance.inference.backends import (
    Backend,
    BackendOptions,
    LoadedModel,
    get_backend,
    load_model,
)
from appliance.inference.errors import BackendUnavailableError, InferenceError
from appliance.inference.package import ModelPackage, load_package
from appliance.inference.postprocess import Postprocessor
from appliance.inference.preprocess import Preprocess, Preprocessor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Something the operator should know: a fallback step, degraded mode, a lost camera."""

    # loaded | fallback | degraded | recovered | source_opened | source_lost | source_reopened
    # | budget_exceeded | uplink_error
    kind: str
    reason: str
    model: str | None = None
    backend: str | None = None
    alert: bool = False
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return {
            "type": "event",
            "kind": self.kind,
            "reason": self.reason,
            "model": self.model,
            "backend": self.backend,
            "alert": self.alert,
            "ts": round(self.time, 3),
        }


@dataclass(frozen=True)
class Candidate:
    """One step of the chain: a package directory, a back end and optionally a file in it."""

    package: Path
    backend: str
    file: str | None = None
    role: str = "primary"
    #: a file of the package an earlier step already tried (named by the config): not again
    skip: str | None = None


@dataclass
class Runner:
    """A loaded model with its pre- and post-processing."""

    candidate: Candidate
    model: LoadedModel
    pre: Preprocess
    post: Postprocessor
    budget: dict[str, float] = field(default_factory=dict)  # ms per stage, from model.json
    identity: dict[str, object] = field(default_factory=dict)  # what every result names

    def __post_init__(self) -> None:
        # Built once per runner, not once per frame: these never change while it runs.
        m = self.model
        self.identity = {
            "model": m.package.name,
            "version": m.package.manifest.version,
            "backend": m.backend,
            "file": m.file.path,
            "degraded": False,
        }


def load_runner(
    c: Candidate,
    options: BackendOptions,
    top: int = 3,
    on_skip: Callable[[str], None] | None = None,
) -> Runner:
    """Load one candidate; every failure is an InferenceError subclass with a clear message.

    ``on_skip`` hears why a fused file was passed over for the plain one (a damaged file), and
    why a file the back end picked did not load when another file of the package was loaded
    instead (OpenCV cannot load an INT8 QDQ file; the optimiser ships the FP32 file beside it).
    """
    package = load_package(c.package)
    backend = get_backend(c.backend)
    try:
        model = load_model(backend, package, c.file, options, top, on_skip, skip=c.skip)
    except BackendUnavailableError:
        raise
    except InferenceError as exc:
        if c.file is not None:
            raise
        model = _load_next_file(backend, package, exc, options, on_skip, c.skip)
    budget = msgspec.structs.asdict(package.manifest.budget_ms)
    # The pipeline runs one frame at a time: the input tensor can live in one reused buffer.
    pre = Preprocessor.for_model(model, reuse=True)
    return Runner(c, model, pre, Postprocessor(model, top), budget)


def _load_next_file(
    backend: Backend,
    package: ModelPackage,
    first_error: InferenceError,
    options: BackendOptions,
    on_skip: Callable[[str], None] | None,
    skip: str | None = None,
) -> LoadedModel:
    """The package's next plain file this back end reads, after the one it picked failed."""
    picked = backend.choose_file(package, None)
    others = [
        f
        for f in package.manifest.files
        if f.format in backend.formats and f.fused is None and f.path not in (picked.path, skip)
    ]
    why = str(first_error)
    for f in others:
        if on_skip is not None:
            on_skip(f"{picked.path} does not load on {backend.name} ({why}); trying {f.path}")
        try:
            return backend.load(package, f.path, options)
        except InferenceError as exc:
            picked, why = f, str(exc)
    raise first_error


class FallbackChain:
    """Walk the candidates in order; degraded when none loads or runs."""

    def __init__(
        self,
        candidates: list[Candidate],
        options: BackendOptions,
        on_event: Callable[[Event], None],
        top: int = 3,
    ) -> None:
        self.candidates = candidates
        self.options = options
        self.on_event = on_event
        self.top = top
        self.position = -1
        self.runner: Runner | None = None
        self.degraded_reason: str | None = None

    @property
    def degraded(self) -> bool:
        return self.runner is None

    def _emit(self, event: Event) -> None:
        (log.warning if event.alert or event.kind != "loaded" else log.info)(
            "%s: %s", event.kind, event.reason
        )
        self.on_event(event)

    def _skipped(self, c: Candidate) -> Callable[[str], None]:
        """An alert for a file of the package that did not load while another one did."""

        def emit(why: str) -> None:
            reason = f"{c.role} {c.package.name}: {why}"
            self._emit(Event("fallback", reason, str(c.package), c.backend, alert=True))

        return emit

    def next_runner(self, reason: str | None = None) -> Runner | None:
        """Drop the current runner (for ``reason``) and load the next candidate that works."""
        if self.runner is not None:
            self.runner.model.close()
            self.runner = None
        if reason is not None and 0 <= self.position < len(self.candidates):
            c = self.candidates[self.position]
            self._emit(Event("fallback", reason, str(c.package), c.backend))
        while self.position + 1 < len(self.candidates):
            self.position += 1
            c = self.candidates[self.position]
            try:
                self.runner = load_runner(c, self.options, self.top, self._skipped(c))
            except InferenceError as exc:
                self._emit(
                    Event(
                        "fallback",
                        f"{c.role} {c.package.name} on {c.backend}: {exc}",
                        str(c.package),
                        c.backend,
                    )
                )
                continue
            except Exception as exc:  # a library bug must not crash-loop the device
                self._emit(
                    Event(
                        "fallback",
                        f"{c.role} {c.package.name} on {c.backend}: unexpected "
                        f"{type(exc).__name__}: {exc}",
                        str(c.package),
                        c.backend,
                    )
                )
                continue
            self._emit(
                Event(
                    "loaded",
                    f"{c.role} model: {self.runner.model.describe()}",
                    str(c.package),
                    c.backend,
                )
            )
            if self.degraded_reason is not None:
                self._emit(
                    Event(
                        "recovered",
                        f"left degraded mode with {c.role} {c.package.name}",
                        str(c.package),
                        c.backend,
                    )
                )
                self.degraded_reason = None
            return self.runner
        if self.degraded_reason is None:
            self.degraded_reason = (
                "no model could be loaded or run; passing frames through without inference"
            )
            self._emit(Event("degraded", self.degraded_reason, alert=True))
        return None

    def reset(self) -> Runner | None:
        """Start again from the first candidate (periodic retry out of degraded mode)."""
        self.position = -1
        return self.next_runner()
