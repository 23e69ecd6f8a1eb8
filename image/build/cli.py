"""``kiln build RECIPE [-o OUTDIR] [--plan] [--verify-repro] [--skip compress,bundle]``."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import click

from image.errors import BuildError


class ReproducibilityError(BuildError):
    """Two builds of the same recipe and version differ."""


@click.command("build")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--outdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: build/<product>-<target>-<version>).",
)
@click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cache directory (default: $EDGEKILN_CACHE or ~/.cache/edgekiln).",
)
@click.option(
    "--runtime",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="A prebuilt frozen runtime (PyInstaller onedir) instead of freezing one.",
)
@click.option(
    "--plan", is_flag=True, help="Print the resolved recipe and the stages; build nothing."
)
@click.option(
    "--verify-repro",
    is_flag=True,
    help="Build twice (slot, boot, data uncached) and compare the digests.",
)
@click.option("--compress-level", type=click.IntRange(1, 19), default=3, show_default=True)
@click.option(
    "--skip",
    "skip",
    default="",
    metavar="compress,bundle",
    help="Leave out these outputs (comma-separated): compress (the .img.zst for flashing), "
    "bundle (the full update bundle). For iterating on an image booted raw (kiln vm); the "
    "report lists them as skipped. Default: build everything.",
)
def build(
    recipe: Path,
    outdir: Path | None,
    cache_dir: Path | None,
    runtime: Path | None,
    plan: bool,
    verify_repro: bool,
    compress_level: int,
    skip: str,
) -> None:
    """Build a signed A/B disk image from RECIPE (a TOML file under recipes/)."""
    from image.build.identity import image_name
    from image.build.pipeline import Pipeline
    from image.build.plan import print_plan
    from image.build.progress import RichObserver
    from image.build.sign import signing_material
    from image.recipe import load_recipe

    skipped = _skip_set(skip)
    loaded = load_recipe(recipe)  # every check runs before any stage
    if plan:
        print_plan(loaded, cache_dir, skipped)
        return
    from image.build.boot import self_check
    from image.build.l4t import L4TPipeline, check_recipe

    self_check(loaded)  # refuse what this builder cannot make before any stage
    pipeline = Pipeline
    if loaded.recipe.target.loader == "l4t":
        check_recipe(loaded)  # the user's L4T root: named and present, before any key or cache
        pipeline = L4TPipeline
    outdir = outdir or Path("build") / image_name(loaded)
    key, keyring = signing_material(loaded, cache_dir)

    def one(out: Path, cache: Path | None, label: str) -> dict[str, str]:
        with RichObserver(label) as observer:
            report = pipeline(
                loaded, out, cache_dir=cache, runtime=runtime, keyring=keyring, key=key,
                observer=observer, compress_level=compress_level, skip=skipped,
            ).run()  # fmt: skip
        click.echo(report.summary())
        return _digests(report.outputs)

    if not verify_repro:
        one(outdir, cache_dir, "build")
        return
    from image.build.identity import default_cache_dir

    shared = (cache_dir or default_cache_dir()).resolve()
    results = []
    for n in (1, 2):
        # Each run gets its own slot/boot/data cache; base and runtime come from the shared one
        # (docs/decisions.md §11: the cached base is an input).
        scratch = Path(tempfile.mkdtemp(prefix=f"repro{n}-", dir=shared))
        for kind in ("base", "freeze", "model"):  # model: optimised packages are timed inputs
            (scratch / kind).symlink_to(shared / kind, target_is_directory=True)
        try:
            results.append(one(outdir / f"repro-{n}", scratch, f"build {n}/2"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    click.echo(json.dumps({"first": results[0], "second": results[1]}, indent=2))
    if results[0] != results[1]:
        differ = sorted(k for k in results[0] if results[0][k] != results[1].get(k))
        raise ReproducibilityError(f"builds differ in: {', '.join(differ)}")
    click.echo("reproducible: both builds are byte-identical")


def _skip_set(value: str) -> frozenset[str]:
    """``--skip compress,bundle`` as a set; an unknown name is a usage error (before any stage)."""
    from image.build.pipeline import SKIPPABLE

    names = frozenset(n.strip() for n in value.split(",") if n.strip())
    unknown = sorted(names - set(SKIPPABLE))
    if unknown:
        raise click.BadParameter(
            f"{', '.join(unknown)}: only {', '.join(SKIPPABLE)} can be skipped", param_hint="--skip"
        )
    return names


def _digests(outputs: dict[str, str]) -> dict[str, str]:
    from image.build.rootfs import file_digest

    return {name: file_digest(Path(path)) for name, path in sorted(outputs.items())}
