"""The model packages a slot holds: as the recipe gives them, optimised, then with fused files.

Optimised for the target with ``models.optimise`` (:mod:`image.model.stage`), then given the
fused variant of the file the target's runtime picks with ``models.fuse``
(:mod:`image.model.fuse_stage`). The slot's cache key hashes the resulting trees, so it covers
both steps; both are recorded in the manifest's components and in the slot stage's detail line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from image.build.report import Observer, StageResult
from image.errors import BuildError
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
        from image.model.stage import describe, optimised_package

        def optimised(role: str, _source: Path) -> Any:
            return optimised_package(loaded, role, cache)

        def line(model: Any) -> str:
            return f"{describe(model)}{' (cached)' if model.cached else ''}"

        title = f"optimise for {loaded.recipe.target.name}"
        out, done = _per_package(
            observer,
            components,
            out,
            "model",
            title,
            "model_optimisation",
            optimised,
            describe,
            line,
        )
        lines += done
    if models.fuse:
        from image.model import fuse_stage

        runtime = fuse_stage.target_runtime(loaded)

        def fused(role: str, source: Path) -> Any:
            return fuse_stage.fused_package(loaded, role, source, cache, runtime)

        what = fuse_stage.describe
        title = f"fused model file for {runtime}"
        out, done = _per_package(
            observer, components, out, "fuse", title, "model_fusing", fused, what, what
        )
        lines += done
    return out, "; ".join(lines)


def _per_package(
    observer: Observer,
    components: dict[str, Any],
    packages: dict[str, Path],
    step: str,
    title: str,
    component: str,
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


def model_version(package: Path) -> dict[str, str]:
    """A package's name and version (model.json), as the build manifest records them."""
    try:
        doc = json.loads((package / "model.json").read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{package}/model.json: cannot read: {exc}") from None
    return {"name": str(doc.get("name", "")), "version": str(doc.get("version", ""))}
