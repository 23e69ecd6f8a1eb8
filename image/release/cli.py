"""``kiln bundle``: make a signed full update bundle from a slot image."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.errors import BundleError
from appliance.bundle.manifest import DEFAULT_CHUNK_SIZE
from appliance.bundle.writer import PayloadSource, write_bundle
from appliance.fsutil import atomic_writer
from image.errors import BuildError
from image.release.keys import KeyFileError, load_keyring_file, load_private_key
from image.release.keys_cli import get_passphrase


class BundleBuildError(BuildError):
    """The bundle could not be made (missing identity field, bad input, writer refusal)."""


def _delta_base(old: Path, key: Ed25519PrivateKey, stack: contextlib.ExitStack) -> Path:
    """The slot image inside ``old`` (a bundle is verified with the signing key's public key)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from appliance.bundle.delta_base import resolve_base
    from appliance.bundle.keyring import Keyring, TrustedKey

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    try:
        return resolve_base(old, Keyring(1, (TrustedKey.from_public_key(raw),)), stack)
    except BundleError as exc:
        raise BundleBuildError(f"--delta-from {old}: {exc}") from None


def _created() -> int:
    """Creation time: SOURCE_DATE_EPOCH for reproducible bundles, else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return int(time.time())
    if not epoch.isdigit():
        raise BundleBuildError(f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time")
    return int(epoch)


@click.command()
@click.option(
    "--slot-image", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The root filesystem slot image (e.g. rootfs.img from kiln build).",
)  # fmt: skip
@click.option(
    "--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Take product, target, version, security_version and key from this recipe.",
)  # fmt: skip
@click.option("--product", help="Product name (overrides the recipe).")
@click.option("--target", "targets", multiple=True, help="Compatible hardware target; repeatable.")
@click.option("--version", "version", help="Release version, semver (overrides the recipe).")
@click.option("--security-version", type=click.IntRange(min=0), help="Anti-rollback level.")
@click.option(
    "--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Encrypted Ed25519 private key (kiln keys new); passphrase from EDGEKILN_KEY_PASSPHRASE.",
)  # fmt: skip
@click.option(
    "--keyring-update", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Carry this keyring (kiln keys keyring) as a rotation payload.",
)  # fmt: skip
@click.option("--expires-in", type=click.IntRange(min=1), help="Expire after this many days.")
@click.option(
    "--compression", type=click.Choice(["zstd", "none"]), default="zstd", show_default=True
)
@click.option("--zstd-level", type=click.IntRange(1, 19), default=3, show_default=True)
@click.option(
    "--chunk-size", type=click.IntRange(min=4096), default=DEFAULT_CHUNK_SIZE, show_default=True,
    help="Bytes per verified chunk (power of two).",
)  # fmt: skip
@click.option(
    "--delta-from", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Make a delta against this OLD slot image, disk image or full bundle (signed by --key).",
)  # fmt: skip
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def bundle(
    slot_image: Path, recipe: Path | None, product: str | None, targets: tuple[str, ...],
    version: str | None, security_version: int | None, key_path: Path | None,
    keyring_update: Path | None, expires_in: int | None, compression: str, zstd_level: int,
    chunk_size: int, delta_from: Path | None, output: Path,
) -> None:  # fmt: skip
    """Make a signed full (or, with --delta-from, delta) update bundle from SLOT-IMAGE."""
    target_list = list(targets)
    if recipe is not None:
        from image.recipe import load_recipe

        loaded = load_recipe(recipe, check_files=False)
        r = loaded.recipe
        product = product or r.product
        version = version or r.version
        security_version = r.security_version if security_version is None else security_version
        target_list = target_list or [r.target.name]
        if key_path is None and r.signing.key:
            key_path = loaded.resolve(r.signing.key)
    missing = [
        opt
        for opt, value in (
            ("--product", product),
            ("--target", target_list),
            ("--version", version),
            ("--security-version", security_version),
            ("--key", key_path),
        )
        if value is None or value == []
    ]
    if missing:
        raise BundleBuildError(
            f"kiln bundle needs {', '.join(missing)} (or a --recipe that sets them)"
        )
    assert product and version and security_version is not None and key_path  # for mypy
    key = load_private_key(key_path, get_passphrase(confirm=False))
    stack = contextlib.ExitStack()
    if delta_from is not None:
        payloads = [PayloadSource.delta(slot_image, _delta_base(delta_from, key, stack))]
    else:
        payloads = [PayloadSource.slot_image(slot_image, compression=compression)]
    if keyring_update is not None:
        try:
            ring = load_keyring_file(keyring_update)
        except KeyFileError as exc:
            raise BundleBuildError(f"--keyring-update: {exc}") from None
        payloads.append(PayloadSource.keyring(ring.to_bytes()))
    created = _created()
    expires = created + expires_in * 86400 if expires_in else None
    from rich.progress import Progress

    total = slot_image.stat().st_size
    try:
        with (
            stack,
            Progress(transient=True, disable=not sys.stderr.isatty()) as bar,
            atomic_writer(output) as out,
        ):
            task = bar.add_task("hashing and compressing", total=total)
            manifest = write_bundle(
                out, key=key, product=product, targets=target_list, version=version,
                security_version=security_version, created=created, expires=expires,
                payloads=payloads, chunk_size=chunk_size, zstd_level=zstd_level,
                spool_dir=output.parent,
                progress=lambda n: bar.advance(task, n),
            )  # fmt: skip
    except BundleError as exc:
        raise BundleBuildError(str(exc)) from None
    p = manifest.payloads[0]
    click.echo(
        f"bundle {output}: {product} {version} for {', '.join(target_list)}, "
        f"security_version {security_version}, key {manifest.key_id}; "
        f"image {p.image.size} bytes -> {output.stat().st_size} bytes"
    )
