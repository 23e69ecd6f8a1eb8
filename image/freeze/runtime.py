"""Freeze the ``appliance`` program with PyInstaller (onedir) for one hardware target.

Public API (used by the image builder)::

    freeze_runtime(target, outdir, *, cache_dir=None, progress=None, extras=(), prebuilt=None,
                   source_root=None) -> FrozenRuntime
    verify_reproducible(target, workdir) -> ReproResult

``progress`` is a callable taking one line of text per stage (e.g. ``click.echo`` or a rich
console's ``log``); ``extras=("opencv",)`` bundles OpenCV too (streams and video files through
OpenCV, cv2.dnn as a second back end; no target needs it to read a V4L2 camera).

``target`` is a target name (``"generic-x86-64"``), a back-end name (``"onnxruntime"``), a loaded
recipe (:class:`image.recipe.LoadedRecipe` or :class:`image.recipe.Recipe`: its ``target.name``
and ``target.backend`` decide) or a :class:`image.freeze.targets.TargetSpec`. The result lands in
``outdir/appliance/`` (the onedir tree: ``appliance`` executable + ``_internal/``), with
``appliance-size.json``/``.txt`` (size per package) and ``appliance-freeze.json`` (target, cache
key, tree digest) beside it. :class:`FrozenRuntime` carries the path, size report and digest.

- Only the target's back end is bundled: every other inference library is excluded by name
  (see :mod:`image.freeze.targets`); OpenVINO's front ends and plug-ins come from our hook in
  ``image/freeze/pyinstaller_hooks``.
- Builds are reproducible: ``SOURCE_DATE_EPOCH`` (default below) and ``PYTHONHASHSEED=0`` are set
  for PyInstaller, so two builds in different folders give the same tree digest
  (:func:`verify_reproducible` proves it).
- With ``cache_dir``, results are cached by a content hash of the target, the ``appliance``
  sources, the freeze code and hooks, every installed distribution's version, Python and
  PyInstaller: an unchanged rebuild is a copy.
- Debug sections are stripped from bundled ELF files that carry them and are safe to strip
  (:func:`strip_debug_info`; PyInstaller's own ``strip`` corrupts auditwheel-repaired libraries).
- PyInstaller freezes a snapshot of the ``appliance`` package taken at the start (first on
  PYTHONPATH), so the cache key describes exactly what was frozen.
- Every fresh build is smoke-tested: the frozen ``appliance info --json`` must report the
  target's library present and the other back ends absent.
- arm64 targets are built under qemu-user in a Debian arm64 root (:mod:`image.freeze.foreign`)
  or taken from ``prebuilt`` (checked by :mod:`image.freeze.prebuilt`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import appliance
from appliance.fsutil import atomic_write_bytes
from image import cache
from image.errors import BuildError
from image.freeze import foreign as freeze_foreign
from image.freeze.pyinstaller import (
    HOOKS_DIR,
    PROGRAM,
    FreezeError,
    run_pyinstaller,
    smoke_check,
    strip_debug_info,
)
from image.freeze.report import SizeReport, differing, file_digests, size_report, tree_digest
from image.freeze.targets import TargetSpec, recipe_spec, resolve_target

log = logging.getLogger(__name__)

# Bump when the spec template or the layout of the output changes (invalidates caches).
FREEZE_FORMAT = 1
# Used when the caller does not set SOURCE_DATE_EPOCH: 2024-01-01T00:00:00Z.
DEFAULT_SOURCE_DATE_EPOCH = "1704067200"
KEEP_RUNTIMES = 4  # frozen runtimes kept in the cache (130-290 MB each)

Progress = Callable[[str], None]


class ReproducibilityError(BuildError):
    """Two builds of the same inputs gave different trees."""


@dataclass(frozen=True)
class FrozenRuntime:
    """A frozen onedir runtime on disk."""

    path: Path  # the onedir tree (holds the ``appliance`` executable)
    target: str
    backend: str
    arch: str
    digest: str  # tree digest, see image.freeze.report
    size: SizeReport
    cache_key: str
    cached: bool  # taken from the cache (no PyInstaller run)
    seconds: float  # wall time of freeze_runtime

    @property
    def executable(self) -> Path:
        """The frozen ``appliance`` program."""
        return self.path / PROGRAM


def target_spec(target: Any, extras: Sequence[str] = ()) -> TargetSpec:
    """Turn a target name, back-end name, recipe or spec into a :class:`TargetSpec`."""
    if isinstance(target, TargetSpec):
        spec = target
    elif isinstance(target, str):
        spec = resolve_target(target)
    else:
        spec = recipe_spec(target)  # its target, back end and [runtime] extras
    return spec.with_extras(tuple(extras)) if extras else spec


def _freeze_code() -> list[Path]:
    """Files of the builder whose content decides the frozen tree (freeze code, hooks)."""
    here = Path(__file__).parent
    names = ("runtime.py", "pyinstaller.py", "targets.py", "foreign.py", "deps.py")
    files = [here / n for n in names]
    files += [p for p in HOOKS_DIR.rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(files)


def snapshot_sources(dest: Path, source_root: Path | None = None) -> str:
    """Copy the ``appliance`` package to ``dest/appliance``; return a digest of the copy.

    PyInstaller freezes this snapshot (it goes first on PYTHONPATH), so the cache key always
    describes exactly what was frozen, even if the working tree changes during a build.
    """
    src = (source_root or Path(appliance.__file__).parent.parent) / "appliance"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(src, dest / "appliance", ignore=ignore)
    h = hashlib.sha256()
    for f in sorted(p for p in (dest / "appliance").rglob("*") if p.is_file()):
        h.update(f"\0{f.relative_to(dest).as_posix()}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_key(spec: TargetSpec, epoch: str, sources: str, src: Path) -> str:
    """Content hash of everything that decides the frozen tree.

    *sources* is the digest of the source snapshot in *src*; only the versions of distributions
    the runtime can contain count (see :mod:`image.freeze.deps`), so installing an unrelated
    package into the build venv keeps the cache valid.
    """
    from image.freeze.deps import runtime_distributions

    h = hashlib.sha256()
    parts: dict[str, Any] = {
        "format": FREEZE_FORMAT,
        "target": [spec.name, spec.arch, spec.included, spec.excluded_modules, spec.strip],
        "hooksconfig": spec.hooksconfig,
        "python": sys.version,
        "machine": platform.machine(),
        "epoch": epoch,
        "sources": sources,
        "dists": runtime_distributions(spec, src / "appliance"),
    }
    h.update(json.dumps(parts, sort_keys=True).encode())
    for f in _freeze_code():
        h.update(f"\0{f.name}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _install(tree: Path, outdir: Path) -> Path:
    """Copy the onedir *tree* to ``outdir/appliance`` (replacing an older one)."""
    dest = outdir / PROGRAM
    if dest.exists() and dest.resolve() == tree.resolve():
        return dest  # a prebuilt runtime already in place
    if dest.exists():
        shutil.rmtree(dest)
    outdir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tree, dest, symlinks=True)
    return dest


def _write_reports(outdir: Path, runtime: FrozenRuntime) -> None:
    report = runtime.size
    atomic_write_bytes(outdir / f"{PROGRAM}-size.json", report.to_json())
    atomic_write_bytes(outdir / f"{PROGRAM}-size.txt", report.to_text().encode())
    meta = {
        "target": runtime.target,
        "backend": runtime.backend,
        "arch": runtime.arch,
        "digest": runtime.digest,
        "cache_key": runtime.cache_key,
        "total_bytes": report.total_bytes,
    }
    atomic_write_bytes(outdir / f"{PROGRAM}-freeze.json", json.dumps(meta, indent=2).encode())


def _build_tree(
    spec: TargetSpec, workdir: Path, epoch: str, cache_dir: Path | None, say: Progress
) -> Path:
    """Build the onedir tree for *spec* (native or foreign) and smoke-test it."""
    if spec.arch == platform.machine():
        tree = run_pyinstaller(spec, workdir, epoch)
        if spec.strip:
            strip_debug_info(tree)
        smoke_check(tree / PROGRAM, spec)
        return tree
    return freeze_foreign.build(spec, workdir, epoch, cache_dir=cache_dir, progress=say)


def freeze_runtime(
    target: Any,
    outdir: Path,
    *,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    extras: Sequence[str] = (),
    prebuilt: Path | None = None,
    source_root: Path | None = None,
) -> FrozenRuntime:
    """Freeze ``appliance`` for *target* into ``outdir/appliance`` (see the module docstring).

    *source_root* is the folder holding the ``appliance`` package to freeze (default: the one
    imported here).
    """
    start = time.monotonic()
    say = progress or (lambda msg: log.info("%s", msg))
    spec = target_spec(target, extras)
    prebuilt = prebuilt or _recipe_prebuilt(target)
    if prebuilt is not None:
        from image.freeze.prebuilt import check_prebuilt

        say(f"checking prebuilt runtime {prebuilt}")
        check_prebuilt(Path(prebuilt), spec)
        return _finish(spec, Path(prebuilt), outdir, key="prebuilt", cached=False, start=start)
    if spec.unbuildable_here:
        raise FreezeError(f"cannot freeze target {spec.name} here: {spec.unbuildable_here}")
    epoch = os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_SOURCE_DATE_EPOCH)
    scratch_root = cache_dir if cache_dir else outdir.parent
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="freeze-", dir=scratch_root) as tmp:
        work = Path(tmp)
        src = work / "src"
        key = cache_key(spec, epoch, snapshot_sources(src, source_root), src)
        if cache_dir is None:
            say(f"{spec.name}: running PyInstaller ({spec.backend} back end, {spec.arch})")
            tree = _build_tree(spec, work, epoch, cache_dir, say)
            return _finish(spec, tree, outdir, key=key, cached=False, start=start)
        entry = cache_dir / key
        # Another build of the same runtime waits here and then finds it (image/cache.py).
        with cache.filling(entry) as hit:
            if hit:
                say(f"{spec.name}: cached runtime {key}")
            else:
                say(f"{spec.name}: running PyInstaller ({spec.backend} back end, {spec.arch})")
                tree = _build_tree(spec, work, epoch, cache_dir, say)
                (work / "entry").mkdir()
                shutil.move(str(tree), work / "entry" / PROGRAM)
                (work / "entry" / "complete").write_text(key + "\n")
                cache.remove_tree(entry)  # an incomplete earlier attempt
                (work / "entry").rename(entry)
            runtime = _finish(spec, entry / PROGRAM, outdir, key=key, cached=hit, start=start)
    if not hit:
        cache.prune(cache_dir, KEEP_RUNTIMES)
    return runtime


def _recipe_prebuilt(target: Any) -> Path | None:
    """``runtime.prebuilt`` of a loaded recipe, resolved against the recipe's folder."""
    recipe = getattr(target, "recipe", None)
    runtime = getattr(recipe, "runtime", None)
    if runtime is None or not runtime.prebuilt:
        return None
    return Path(target.resolve(runtime.prebuilt))


def _finish(
    spec: TargetSpec, tree: Path, outdir: Path, *, key: str, cached: bool, start: float
) -> FrozenRuntime:
    dest = _install(tree, outdir)
    runtime = FrozenRuntime(
        path=dest,
        target=spec.name,
        backend=spec.backend,
        arch=spec.arch,
        digest=tree_digest(dest),
        size=size_report(dest, spec.name),
        cache_key=key,
        cached=cached,
        seconds=time.monotonic() - start,
    )
    _write_reports(outdir, runtime)
    return runtime


@dataclass(frozen=True)
class ReproResult:
    """Outcome of two independent builds."""

    identical: bool
    digests: tuple[str, str]
    differing: list[str]


def verify_reproducible(
    target: Any,
    workdir: Path,
    *,
    extras: Sequence[str] = (),
    progress: Progress | None = None,
    source_root: Path | None = None,
) -> ReproResult:
    """Build *target* twice, uncached, in different folders and compare the trees.

    Both builds freeze one snapshot of the sources, so edits to the working tree in between
    cannot be mistaken for non-determinism.
    """
    snapshot = workdir / "snapshot"
    snapshot_sources(snapshot, source_root)
    builds = []
    for name in ("first", "second-build"):
        rt = freeze_runtime(
            target, workdir / name, extras=extras, progress=progress, source_root=snapshot
        )
        builds.append((rt.digest, file_digests(rt.path)))
    diff = differing(builds[0][1], builds[1][1])
    return ReproResult(not diff, (builds[0][0], builds[1][0]), diff)
