"""``kiln build --plan``: the resolved recipe and the stages that would run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from image.recipe import LoadedRecipe, is_buildable


def print_plan(
    loaded: LoadedRecipe, cache_dir: Path | None, skip: frozenset[str] = frozenset()
) -> None:
    """Print the merged recipe (JSON), the files it came from, and the stage list (the stages
    ``skip`` names, ``kiln build --skip``, as skipped)."""
    from image.build.identity import STAGES, default_cache_dir, image_name
    from image.build.rootfs import base_key
    from image.model.fuse_stage import plan_note as fuse_plan_note
    from image.model.stage import plan_note

    cache = (cache_dir or default_cache_dir()).resolve()
    click.echo(f"# recipe {loaded.path} (from {', '.join(str(f) for f in loaded.files)})")
    click.echo(f"# digest {loaded.digest}")
    click.echo(json.dumps(loaded.to_dict(), indent=2, sort_keys=True))
    if loaded.recipe.target.loader == "l4t":
        from image.build.l4t import PLAN

        click.echo(f"# L4T slot images for NVIDIA's flash tools, cache {cache}")
        for n, (stage, note) in enumerate(PLAN, 1):
            click.echo(f"{n}. {stage:<9} {note}")
        return
    if not is_buildable(loaded):
        click.echo(
            f"# {loaded.recipe.target.arch} images are not built by this version (validated only)"
        )
        return
    key = base_key(loaded)
    base_state = "cached" if (cache / "base" / key / "complete").exists() else "to build"
    click.echo(f"# image {image_name(loaded)}.img, cache {cache}")
    notes = {
        "base": f"key {key} ({base_state})",
        "runtime": runtime_note(loaded),
        "slot": "rootfs_a: ext4 without journal, overlay + runtime + models; "
        + plan_note(loaded, cache)
        + "; "
        + fuse_plan_note(loaded),
        "boot": "ESP: grub-mkimage EFI, grub.cfg, grubenv x2",
        "data": "ext4 with journal",
        "disk": "GPT boot/rootfs_a/rootfs_b/data, dd conv=notrunc,sparse",
        "bmap": "bmaptool create",
        "compress": "zstd",
        "manifest": "partition digests, recipe digest, versions; signed",
        "bundle": "full update bundle of the same version (slot image, zstd, signed)",
    }
    for stage in skip:
        notes[stage] = "skipped (--skip)"
    for n, stage in enumerate(STAGES, 1):
        click.echo(f"{n}. {stage:<9} {notes.get(stage, '')}")


def runtime_note(loaded: LoadedRecipe) -> str:
    """The frozen runtime's back ends and ``[runtime] extras``, as the plan lists them."""
    from image.freeze.targets import recipe_spec

    spec = recipe_spec(loaded)
    extras = ", ".join(spec.extras) or "none"
    return (
        f"frozen appliance runtime for {spec.name}: back ends {', '.join(spec.backends)}; "
        f"extras {extras} (image.freeze.runtime, own cache)"
    )
