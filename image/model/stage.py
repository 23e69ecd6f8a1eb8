"""The builder's model step: a recipe's ``[models] optimise = true`` before the slot stage.

For each package (primary, fallback) :func:`image.model.optimise.optimise` runs for the recipe's
target with the recipe's gate (``max_accuracy_drop``, in percentage points) and ``select``, and
the other back ends its frozen runtime carries (``[runtime] extras``: with OpenCV, a file OpenCV
cannot load ships with the FP32 parent beside it; without, no file only OpenCV would read). The
result is cached under ``<cache>/model/<key>/package/`` where the key hashes every input that
decides its bytes: the package's tree digest, the target, those back ends, the options, the
optimiser's code (``image/model/*.py`` and the package format modules) and the versions of the
runtimes and quantisers it measured with. The slot stage then copies the cached package, and
since the slot's key hashes the model trees it uses, a different selection rebuilds the slot.

Timing decides ``select = "fastest"`` (and the table holds measured latencies), so two uncached
runs may ship different bytes; a cache entry is therefore an *input* of later builds, like the
base root (docs/decisions.md §11). ``select = "smallest"`` depends on file sizes only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image import cache as build_cache
from image.errors import BuildError
from image.recipe import LoadedRecipe, Models, canonical_json

log = logging.getLogger(__name__)

KIND = "model"
KEEP_ENTRIES = 8  # two packages per recipe, a few recipes or option sets
FORMAT = 1  # bump when this module changes what a cache entry holds
ROLES = ("primary", "fallback")
# Libraries whose versions decide an optimised package's bytes (quantiser, runtime measured on).
LIBRARIES = ("onnx", "onnxruntime", "openvino", "nncf", "ai-edge-litert", "numpy")


class ModelStepError(BuildError):
    """The recipe's model optimisation failed (the message names the recipe and the package)."""


@dataclass(frozen=True)
class OptimisedModel:
    """One role's package as the slot will hold it."""

    role: str
    source: Path
    path: Path
    key: str
    cached: bool
    selected: str
    summary: dict[str, Any]


def _versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = ""
    return out


def code_digest() -> str:
    """sha256 over the optimiser's own sources (and the package format it writes)."""
    here = Path(__file__).parent
    # The fuse step (fuse*.py) runs after optimisation and has its own cache key.
    files = sorted(f for f in here.glob("*.py") if not f.name.startswith("fuse"))
    import appliance.inference.package as package_module
    import appliance.inference.package_check as check_module

    files += [Path(package_module.__file__ or ""), Path(check_module.__file__ or "")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def options_of(models: Models) -> dict[str, Any]:
    """The recipe's optimisation options as the optimiser takes them (drop as a fraction)."""
    return {
        "max_accuracy_drop": models.max_accuracy_drop / 100.0,
        "select": models.select,
        "fp16": models.fp16,
    }


def fallback_backends(loaded: LoadedRecipe) -> tuple[str, ...]:
    """The back ends the recipe's frozen runtime carries besides its own (e.g. ``opencv``)."""
    from image.freeze.targets import recipe_spec

    spec = recipe_spec(loaded)
    return tuple(b for b in spec.backends if b != spec.backend)


def model_key(package: Path, target: str, models: Models, fallbacks: tuple[str, ...] = ()) -> str:
    """Content key of one optimised package (see the module docstring for what it hashes)."""
    from image.build.rootfs import tree_digest

    inputs = {
        "format": FORMAT,
        "package": tree_digest(package),
        "target": target,
        "fallback_backends": sorted(fallbacks),
        "options": options_of(models),
        "code": code_digest(),
        "versions": _versions(),
    }
    return hashlib.sha256(canonical_json(inputs)).hexdigest()[:32]


def entry_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / KIND / key


def is_cached(cache_dir: Path, key: str) -> bool:
    return (entry_dir(cache_dir, key) / "complete").exists()


def optimised_package(
    loaded: LoadedRecipe, role: str, cache_dir: Path, *, key: str | None = None
) -> OptimisedModel:
    """The optimised package of ``role`` for the recipe's target, from the cache or made now."""
    r = loaded.recipe
    source = loaded.resolve(getattr(r.models, role))
    key = key or model_key(source, r.target.name, r.models, fallback_backends(loaded))
    entry = entry_dir(cache_dir, key)
    out = entry / "package"
    # resolve(): --verify-repro links <scratch>/model to the shared cache, maybe not made yet.
    entry.parent.resolve().mkdir(parents=True, exist_ok=True)
    # Another build of the same key waits here and then finds it (image/cache.py).
    with build_cache.filling(entry) as cached:
        if cached:
            summary = json.loads((entry / "summary.json").read_text())
            return OptimisedModel(role, source, out, key, True, summary["selected"], summary)
        summary = _optimise(loaded, role, source, entry)
    build_cache.prune(cache_dir / KIND, KEEP_ENTRIES)
    return OptimisedModel(role, source, out, key, False, summary["selected"], summary)


def _optimise(loaded: LoadedRecipe, role: str, source: Path, entry: Path) -> dict[str, Any]:
    """Optimise ``source`` into a scratch folder and swap it in as ``entry``."""
    from image.model.optimise import GateError, optimise

    r = loaded.recipe
    opts = options_of(r.models)
    tmp = build_cache.scratch(entry)
    try:
        res = optimise(
            source,
            r.target.name,
            tmp / "package",
            max_accuracy_drop=opts["max_accuracy_drop"],
            select=opts["select"],
            fp16=opts["fp16"],
            fallback_backends=fallback_backends(loaded),
        )
        summary = _summary(res)
        build_cache.commit(tmp, entry, summary)
    except GateError as exc:
        origin = loaded.provenance.get("models.optimise", loaded.path)
        raise ModelStepError(
            f"{origin}: models.optimise: the {role} package fails the gate for "
            f"{r.target.name}: {exc}. Fix the calibration split, raise "
            'models.max_accuracy_drop, or set models.select = "fp32"'
        ) from None
    finally:
        build_cache.remove_tree(tmp)
    return summary


def _summary(res: Any) -> dict[str, Any]:
    """What the manifest and build report record about one optimisation."""
    # LiteRT passes through: its "selected" is a file name, and it may have no rows at all.
    selected = next((v for v in res.variants if res.selected in (v.name, v.file)), None)
    fp32 = next((v for v in res.variants if v.name == "fp32"), None)
    return {
        "runtime": res.runtime,
        "selected": res.selected or "passthrough",
        "precision": selected.precision if selected else "",
        "file": selected.file if selected else "",
        "top1": round(selected.top1, 6) if selected else None,
        "fp32_top1": round(fp32.top1, 6) if fp32 else None,
        "drop_pp": round(selected.drop_pp, 4) if selected else None,
        "size_bytes": selected.size_bytes if selected else None,
        "fp32_size_bytes": fp32.size_bytes if fp32 else None,
        "max_accuracy_drop_pp": round(res.max_accuracy_drop * 100, 4),
        "variants": len(res.variants),
    }


def describe(model: OptimisedModel) -> str:
    """One line for the build report: role, selected variant, precision, accuracy, size."""
    s = model.summary
    if s.get("top1") is None:
        return f"{model.role}: {s['selected']} on {s['runtime']}"
    size = f"{s['size_bytes'] / 1e3:.0f} kB" if s.get("size_bytes") else "?"
    return (
        f"{model.role}: {s['selected']} ({s['precision']}, top-1 {s['top1'] * 100:.2f} % vs "
        f"FP32 {s['fp32_top1'] * 100:.2f} %, {size})"
    )


def plan_note(loaded: LoadedRecipe, cache_dir: Path) -> str:
    """What ``kiln build --plan`` says about the model step (cached or to run, per package)."""
    m = loaded.recipe.models
    if not m.optimise:
        return "models as given (models.optimise = false)"
    parts = []
    for role in ROLES:
        source = loaded.resolve(getattr(m, role))
        try:
            key = model_key(source, loaded.recipe.target.name, m, fallback_backends(loaded))
        except OSError as exc:
            raise ModelStepError(f"{source}: cannot read the model package: {exc}") from None
        parts.append(f"{role} {key[:12]} ({'cached' if is_cached(cache_dir, key) else 'to run'})")
    also = fallback_backends(loaded)
    beside = f", FP32 beside a file {'/'.join(also)} cannot load" if also else ""
    return (
        f"optimise for {loaded.recipe.target.name} (top-1 drop <= {m.max_accuracy_drop:g} pp, "
        f"select {m.select}{beside}): " + ", ".join(parts)
    )
