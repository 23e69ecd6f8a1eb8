"""``kiln freeze RECIPE``: build the target's frozen ``appliance`` runtime (PyInstaller onedir)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import click

from image.freeze.runtime import (
    FrozenRuntime,
    ReproducibilityError,
    freeze_runtime,
    target_spec,
    verify_reproducible,
)


def default_cache_dir() -> Path:
    """``$KILN_CACHE_DIR/freeze`` or ``~/.cache/edgekiln/freeze``."""
    base = os.environ.get("KILN_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgekiln"
    )
    return Path(base) / "freeze"


def _target(recipe_or_name: str) -> Any:
    """A recipe file is loaded (and validated); anything else is a target or back-end name."""
    if recipe_or_name.endswith(".toml") or Path(recipe_or_name).is_file():
        from image.recipe import load_recipe

        return load_recipe(recipe_or_name, check_files=False)
    return recipe_or_name


def _describe(rt: FrozenRuntime) -> str:
    how = "from cache" if rt.cached else f"built in {rt.seconds:.1f} s"
    top = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in list(rt.size.packages.items())[:4])
    return (
        f"{rt.target} ({rt.backend}, {rt.arch}): {rt.path} — {rt.size.total_bytes / 1e6:.1f} MB, "
        f"{how}\n  largest (MB): {top}\n  digest {rt.digest}"
    )


@click.command()
@click.argument("recipe")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output directory.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Build cache directory.")
@click.option(
    "--no-cache", is_flag=True, help="Always run PyInstaller; do not read or fill the cache."
)
@click.option(
    "--with",
    "extras",
    multiple=True,
    type=click.Choice(["opencv"]),
    help="Bundle a further library (opencv: streams/video files/PNG folders through OpenCV and "
    "the cv2.dnn fallback back end; +151 MiB). A recipe's [runtime] extras are added anyway.",
)
@click.option(
    "--prebuilt",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Use this onedir runtime (e.g. from an arm64 runner) after checking it fits the target.",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder holding the appliance package to freeze (default: the one installed here).",
)
@click.option(
    "--verify-repro",
    is_flag=True,
    help="Build twice in different folders (uncached) and fail unless the trees are identical.",
)
def freeze(
    recipe: str,
    output: Path | None,
    cache_dir: Path | None,
    no_cache: bool,
    extras: tuple[str, ...],
    prebuilt: Path | None,
    source: Path | None,
    verify_repro: bool,
) -> None:
    """Freeze the appliance program for RECIPE (a recipe file, target or back-end name).

    Only the target's inference back end is bundled. The onedir tree goes to OUTPUT/appliance
    with a size report (appliance-size.txt/.json) beside it.
    """
    target = _target(recipe)
    spec = target_spec(target, extras)
    out = output or Path("out") / f"runtime-{spec.name}"
    if verify_repro:
        with tempfile.TemporaryDirectory(prefix="kiln-repro-") as tmp:
            res = verify_reproducible(
                target, Path(tmp), extras=extras, progress=click.echo, source_root=source
            )
        if not res.identical:
            shown = "\n  ".join(res.differing[:40])
            raise ReproducibilityError(
                f"{spec.name}: two builds differ ({res.digests[0]} vs {res.digests[1]}) in "
                f"{len(res.differing)} files:\n  {shown}"
            )
        click.echo(
            f"reproducible: two builds in different folders are identical ({res.digests[0]})"
        )
        return
    cache = None if no_cache else (cache_dir or default_cache_dir())
    rt = freeze_runtime(
        target,
        out,
        cache_dir=cache,
        progress=click.echo,
        extras=extras,
        prebuilt=prebuilt,
        source_root=source,
    )
    click.echo(_describe(rt))
    click.echo(f"  size report: {out / 'appliance-size.txt'}")
