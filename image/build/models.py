"""The model packages a slot holds: as the recipe gives them, optimised, then with fused files.

Optimised for the target with ``models.optimise`` (:mod:`image.model.stage`), then given the
fused variant of the file the target's runtime picks with ``models.fuse``
(:mod:`image.model.fuse_stage`). The slot's cache key hashes the resulting trees, so it covers
both steps; both are recorded in the manifest's components and in the slot stage's detail line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from image.build.report import Observer, StageResult
from image.recipe import LoadedRecipe


def slot_models(
    loaded: LoadedRecipe, cache: Path, observer: Observer, components: dict[str, Any]
) -> tuple[dict[str, Path], str]:
    """The packages for the slot by role (primary, fallback), and one detail line for the report.

    ``components`` (the image manifest's) gets ``model_optimisation`` and ``model_fusing``.
    """
    models = loaded.recipe.models
    out: dict[str, Path] = {
        "primary": loaded.resolve(models.primary),
        "fallback": loaded.resolve(models.fallback),
    }
    lines: list[str] = []
    if models.optimise:
        out, optimised = _optimise(loaded, cache, observer, components, out)
        lines += optimised
    if models.fuse:
        out, fused = _fuse(loaded, cache, observer, components, out)
        lines += fused
    return out, "; ".join(lines)


def _optimise(
    loaded: LoadedRecipe,
    cache: Path,
    observer: Observer,
    components: dict[str, Any],
    given: dict[str, Path],
) -> tuple[dict[str, Path], list[str]]:
    from image.model.stage import describe, optimised_package

    def make(role: str, _source: Path) -> Any:
        return optimised_package(loaded, role, cache)

    def line(model: Any) -> str:
        return f"{describe(model)}{' (cached)' if model.cached else ''}"

    title = f"optimise for {loaded.recipe.target.name}"
    return _per_package(
        "model", title, "model_optimisation", observer, components, given, make, describe, line
    )


def _fuse(
    loaded: LoadedRecipe,
    cache: Path,
    observer: Observer,
    components: dict[str, Any],
    packages: dict[str, Path],
) -> tuple[dict[str, Path], list[str]]:
    from image.model.fuse_stage import describe, fused_package, target_runtime

    runtime = target_runtime(loaded)

    def make(role: str, source: Path) -> Any:
        return fused_package(loaded, role, source, cache, runtime)

    title = f"fused model file for {runtime}"
    return _per_package(
        "fuse", title, "model_fusing", observer, components, packages, make, describe, describe
    )


def _per_package(
    step: str,
    title: str,
    component: str,
    observer: Observer,
    components: dict[str, Any],
    packages: dict[str, Path],
    make: Callable[[str, Path], Any],
    describe: Callable[[Any], str],
    line: Callable[[Any], str],
) -> tuple[dict[str, Path], list[str]]:
    """Run one model step per package: timed, recorded in components, one detail line each."""
    out, lines = {}, []
    for role, source in packages.items():
        observer.start(f"{step}:{role}", title)
        start = time.monotonic()
        model = make(role, source)
        result = StageResult(
            f"{step}:{role}", model.cached, round(time.monotonic() - start, 2),
            key=model.key, detail=describe(model),
        )  # fmt: skip
        observer.done(result)  # not a report stage: the slot stage's detail says it
        components.setdefault(component, {})[role] = model.summary
        out[role] = model.path
        lines.append(line(model))
    return out, lines
