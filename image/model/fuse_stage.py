"""The builder's fuse step: ``[models] fuse = true`` gives the slot a fused copy of each package.

After the optional optimisation (image/model/stage.py), each package (primary, fallback) gets
the fused variant (image/model/fuse.py) of the ONNX file the target's runtime picks, when that
runtime runs fused files (``FUSED_BACKENDS``: onnxruntime, OpenVINO, OpenCV). No fused file is
made when the runtime picks another format (an OpenVINO IR from the optimiser, a TFLite file on
Coral) or runs none (TensorRT builds its own engine on the device); the step says why.

Before it is listed, the fused file is checked against its source on the reference split on
onnxruntime and on the target's own runtime (image.model.fuse.check_fused).

The fused package is cached under ``<cache>/fused/<key>/package/``; the key hashes the source
package's tree digest, the chosen file, the options (colour, top-k, check, the runtimes checked
on), the fusing code and
the ``onnx`` version that serialises the graph. Fusing is deterministic (the same key always gives
the same bytes), so a cold and a cached build hold the same slot.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image import cache as build_cache
from image.errors import BuildError
from image.model.fuse import DEFAULT_TOP_K, FuseError, fuse_package
from image.recipe import LoadedRecipe, canonical_json

log = logging.getLogger(__name__)

KIND = "fused"
KEEP_ENTRIES = 8  # two packages per recipe, a few recipes
FORMAT = 1  # bump when this module changes what a cache entry holds
COLOR = "BGR"  # camera, video-file and image-folder sources deliver BGR frames
CHECK = 64  # reference images on which fused and plain file must agree


class FuseStepError(BuildError):
    """Fusing a package for the recipe's target failed (names the recipe and the package)."""


@dataclass(frozen=True)
class FusedModel:
    """One role's package after the fuse step (``path`` is ``source`` when nothing was fused)."""

    role: str
    source: Path
    path: Path
    key: str
    cached: bool
    summary: dict[str, Any]  # "file", "fused", ... or "skipped": why no fused file


def target_runtime(loaded: LoadedRecipe) -> str:
    """The device runtime of the recipe's target (as image.model.optimise.runtime_of finds it)."""
    from image.model.optimise import TARGET_RUNTIMES, runtime_of

    name = loaded.recipe.target.name
    # A recipe may name its own target; its backend is then the runtime.
    return runtime_of(name) if name in TARGET_RUNTIMES else loaded.recipe.target.backend


def file_to_fuse(package_dir: Path, runtime: str) -> tuple[str | None, str]:
    """(the ONNX file ``runtime`` picks from the package, "") or (None, why none is fused)."""
    from appliance.inference.backends import FUSED_BACKENDS, get_backend
    from appliance.inference.errors import InferenceError
    from appliance.inference.package import load_package

    if runtime not in FUSED_BACKENDS:
        return None, f"{runtime} runs no fused file"
    try:
        package = load_package(package_dir)
        f = get_backend(runtime).choose_file(package)
    except InferenceError as exc:
        # The build has never required a valid package (the device's self-test gates it); the
        # reason goes to the log, the manifest says only that it was not fused (no paths).
        log.warning("%s: not fused: %s", package_dir, exc)
        return None, f"no {runtime} model file in the package (see the build log)"
    if f.format != "onnx":
        return None, f"{runtime} runs {f.path} ({f.format})"
    return f.path, ""


def code_digest() -> str:
    """sha256 over the fusing code (the graph surgery and this step)."""
    import image.model.fuse as fuse_module

    h = hashlib.sha256()
    for path in (Path(fuse_module.__file__ or ""), Path(__file__)):
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def plan_note(loaded: LoadedRecipe) -> str:
    """What ``kiln build --plan`` says about the fuse step."""
    from appliance.inference.backends import FUSED_BACKENDS

    if not loaded.recipe.models.fuse:
        return "models not fused (models.fuse = false)"
    runtime = target_runtime(loaded)
    if runtime not in FUSED_BACKENDS:
        return f"no fused files ({runtime} runs none)"
    return (
        f"fuse the ONNX file {runtime} picks from each package, if any, for {COLOR} frames "
        f"(top-{DEFAULT_TOP_K}, "
        f"checked on {' and '.join(check_backends(runtime))})"
    )


def check_backends(runtime: str) -> tuple[str, ...]:
    """Where a fused file is checked: onnxruntime, and the target's own runtime."""
    return ("onnxruntime",) if runtime == "onnxruntime" else ("onnxruntime", runtime)


def fuse_key(package_dir: Path, file: str, runtime: str) -> str:
    """Content key of one fused package (see the module docstring for what it hashes)."""
    from image.build.rootfs import tree_digest

    inputs = {
        "format": FORMAT,
        "package": tree_digest(package_dir),
        "file": file,
        "options": {"color": COLOR, "top_k": DEFAULT_TOP_K, "check": CHECK},
        "checked_on": check_backends(runtime),
        "code": code_digest(),
        "onnx": importlib.metadata.version("onnx"),
    }
    return hashlib.sha256(canonical_json(inputs)).hexdigest()[:32]


def fused_package(
    loaded: LoadedRecipe, role: str, source: Path, cache_dir: Path, runtime: str
) -> FusedModel:
    """``source`` with the fused variant of ``runtime``'s file, from the cache or made now."""
    file, why = file_to_fuse(source, runtime)
    if file is None:
        return FusedModel(role, source, source, "", False, {"skipped": why})
    key = fuse_key(source, file, runtime)
    entry = cache_dir / KIND / key
    out = entry / "package"
    entry.parent.resolve().mkdir(parents=True, exist_ok=True)
    # Another build of the same key waits here and then finds it (image/cache.py).
    with build_cache.filling(entry) as cached:
        if cached:
            summary = json.loads((entry / "summary.json").read_text())
            return FusedModel(role, source, out, key, True, summary)
        summary = _fuse(loaded, role, source, entry, file, runtime)
    build_cache.prune(cache_dir / KIND, KEEP_ENTRIES)
    return FusedModel(role, source, out, key, False, summary)


def _fuse(
    loaded: LoadedRecipe, role: str, source: Path, entry: Path, file: str, runtime: str
) -> dict[str, Any]:
    """Fuse ``file`` of a copy of ``source`` in a scratch folder and swap it in as ``entry``."""
    backends = check_backends(runtime)
    tmp = build_cache.scratch(entry)
    try:
        shutil.copytree(source, tmp / "package", symlinks=True)
        (made,) = fuse_package(
            tmp / "package", COLOR, DEFAULT_TOP_K, CHECK, files=[file], backends=backends
        )
        summary = {
            "runtime": runtime,
            "file": made.source,
            "fused": made.path,
            "color": made.color,
            "top_k": made.top_k,
            "size_bytes": made.size,
            "sha256": hashlib.sha256((tmp / "package" / made.path).read_bytes()).hexdigest(),
            "images_checked": made.images_checked,
            "checked_on": list(backends),
        }
        build_cache.commit(tmp, entry, summary)
    except FuseError as exc:
        origin = loaded.provenance.get("models.fuse", loaded.path)
        raise FuseStepError(
            f"{origin}: models.fuse: the {role} package cannot be fused for {runtime}: {exc}. "
            "Fix the package or set models.fuse = false"
        ) from None
    finally:
        build_cache.remove_tree(tmp)
    return summary


def describe(model: FusedModel) -> str:
    """One line for the slot stage: what was fused, or why nothing was."""
    s = model.summary
    if "skipped" in s:
        return f"{model.role}: not fused ({s['skipped']})"
    top = f", top-{s['top_k']}" if s["top_k"] else ""
    cached = " (cached)" if model.cached else ""
    return (
        f"{model.role}: {s['file']} -> {s['fused']} ({s['color']}{top}, "
        f"{s['images_checked']} images checked){cached}"
    )
