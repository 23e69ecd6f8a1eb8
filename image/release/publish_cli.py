"""``kiln publish BUNDLE REPO_DIR``: add a bundle to a TUF update channel (static files)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--keys", type=click.Path(file_okay=False, path_type=Path),
    help="TUF role keys, created on first publish (default $EDGEKILN_TUF_KEYS or "
    "~/.config/edgekiln/tuf-keys/<repo>-<hash>); never inside REPO_DIR or its parent unless "
    "given here. Root and targets are offline keys.",
)  # fmt: skip
@click.option(
    "--online-keys", type=click.Path(file_okay=False, path_type=Path),
    help="Snapshot and timestamp keys (the online pair), kept apart from --keys.",
)  # fmt: skip
@click.option("--expires-days", type=click.IntRange(1, 3650), default=30, show_default=True)
def publish(
    bundle: Path, repo_dir: Path, keys: Path | None, online_keys: Path | None, expires_days: int
) -> None:
    """Publish BUNDLE (full or delta) into the TUF repository REPO_DIR."""
    from image.release.publish import default_keys_dir
    from image.release.publish import publish as do_publish

    for path in do_publish(bundle, repo_dir, keys, expires_days, online_keys):
        click.echo(f"published {path}")
    click.echo(f"TUF keys: {keys or default_keys_dir(repo_dir)} (keep root and targets offline)")
