"""``kiln flash IMAGE TARGET``: bmap-aware write with read-back verification."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("flash")
@click.argument("image", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--bmap",
    "bmap_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Block map (default: IMAGE's .bmap beside it, if present).",
)
@click.option("--no-bmap", is_flag=True, help="Write every byte of the image.")
@click.option("--force", is_flag=True, help="Write even to a mounted disk or the disk holding /.")
@click.option(
    "--provision",
    "provision",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="provision.toml (or a folder with it and its PEM files): this device's id, site, "
    "broker, client certificate and CA, written onto the data partition.",
)
def flash(
    image: Path,
    target: Path,
    bmap_path: Path | None,
    no_bmap: bool,
    force: bool,
    provision: Path | None,
) -> None:
    """Write IMAGE (.img or .img.zst) to TARGET (a block device or a file), then verify it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from image.flash import default_bmap
    from image.flash import flash as do_flash
    from image.flash_provision import check_source, write_provision

    prov = check_source(provision) if provision is not None else None  # refused before writing
    bmap = None if no_bmap else (bmap_path or default_bmap(image))
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(f"writing {target}", total=None)
        result = do_flash(
            image, target, bmap_path=bmap, force=force,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    click.echo(
        f"wrote {result['written'] / 2**20:.1f} MiB of {result['image_size'] / 2**20:.0f} MiB "
        f"to {target}{' (bmap)' if bmap else ''}; read-back verified"
    )
    if prov is not None:
        written = write_provision(target, prov)
        click.echo(
            f"provisioned {prov.device_id} (site {prov.site or 'unassigned'}"
            f"{', broker ' + prov.broker if prov.broker else ''}): {len(written)} files on data"
        )
