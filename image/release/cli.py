"""The release commands: ``kiln keys`` (release keys, device keyrings), ``kiln bundle`` (a signed
full or delta update bundle from a slot image), ``kiln publish`` (a bundle into a TUF channel)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle.errors import BundleError
from appliance.bundle.keyring import key_id_for
from appliance.bundle.manifest import DEFAULT_CHUNK_SIZE
from appliance.bundle.writer import PayloadSource, write_bundle
from appliance.fsutil import atomic_write_bytes, atomic_writer
from image.errors import BuildError
from image.release.keys import (
    MIN_PASSPHRASE,
    PASSPHRASE_ENV,
    KeyFileError,
    create_key,
    is_encrypted,
    load_keyring_file,
    load_private_key,
    load_public_key,
    next_keyring,
    passphrase_from_env,
    public_pem,
    raw_public,
)


def get_passphrase(confirm: bool) -> bytes:
    """From ``EDGEKILN_KEY_PASSPHRASE``, else a hidden prompt."""
    env = passphrase_from_env()
    if env is not None:
        return env
    value: str = click.prompt(
        f"Key passphrase (min {MIN_PASSPHRASE} chars; or set {PASSPHRASE_ENV})",
        hide_input=True,
        confirmation_prompt=confirm,
        err=True,
    )
    return value.encode("utf-8")


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


def _check_baked_level(slot_image: Path, security_version: int) -> None:
    """Refuse a bundle whose signed level differs from the one baked into its slot image.

    The device's anti-rollback floor never goes below the running slot's own level (its
    /etc/edgekiln/device.json, docs/decisions.md §19): a bundle signed above it would leave a
    floor that deleting the state file lowers again. Slot images without that file (not ext4,
    or not built by kiln) are not checked.
    """
    import json

    from image.inspect import _debugfs_cat

    raw = _debugfs_cat(slot_image, 0, "/etc/edgekiln/device.json")
    try:
        baked = json.loads(raw)["security_version"] if raw else None
    except (ValueError, KeyError, TypeError):
        baked = None
    if isinstance(baked, int) and baked != security_version:
        raise BundleBuildError(
            f"{slot_image} bakes security_version {baked} (its /etc/edgekiln/device.json) but the "
            f"bundle would sign {security_version}: the device takes its floor from the slot; "
            f"pass --security-version {baked} or rebuild the image at {security_version}"
        )


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
@click.option(
    "--zstd-level", type=click.IntRange(1, 19), default=3, show_default=True,
    help="Level for a full image. A delta is always made at its smallest (zstd -19, lanes, xz).",
)  # fmt: skip
@click.option(
    "--chunk-size", type=click.IntRange(min=4096), default=DEFAULT_CHUNK_SIZE, show_default=True,
    help="Bytes per verified chunk (power of two).",
)  # fmt: skip
@click.option(
    "--delta-from", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Make a delta against this OLD slot image, disk image or full bundle (signed by --key).",
)  # fmt: skip
@click.option(
    "--allow-downgrade", is_flag=True,
    help="Sign consent to install over a newer version of the same security_version.",
)  # fmt: skip
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
def bundle(
    slot_image: Path, recipe: Path | None, product: str | None, targets: tuple[str, ...],
    version: str | None, security_version: int | None, key_path: Path | None,
    keyring_update: Path | None, expires_in: int | None, compression: str, zstd_level: int,
    chunk_size: int, delta_from: Path | None, allow_downgrade: bool, output: Path,
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
    _check_baked_level(slot_image, security_version)
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
                spool_dir=output.parent, allow_downgrade=allow_downgrade,
                progress=lambda n: bar.advance(task, n),
            )  # fmt: skip
    except BundleError as exc:
        raise BundleBuildError(str(exc)) from None
    p = next(p for p in manifest.payloads if p.kind != "keyring")
    click.echo(
        f"bundle {output}: {product} {version} for {', '.join(target_list)}, "
        f"security_version {security_version}, key {manifest.key_id}; "
        f"image {p.image.size} bytes -> {output.stat().st_size} bytes"
    )


# --- kiln keys ----------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Create release keys, export public keys, build device keyrings."""


@keys.command()
@click.argument("name")
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("keys"),
    show_default=True, help="Where NAME.key and NAME.pub are written.",
)  # fmt: skip
def new(name: str, directory: Path) -> None:
    """Generate an Ed25519 release key NAME (private: encrypted PKCS#8, mode 0600)."""
    key_path, pub_path, key_id = create_key(name, directory, get_passphrase(confirm=True))
    click.echo(f"key {key_id}: private {key_path} (0600, encrypted), public {pub_path}")


@keys.command()
@click.argument("keyfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def export(keyfile: Path) -> None:
    """Print the public key (PEM) and key id of KEYFILE (.key asks for the passphrase, .pub not)."""
    if is_encrypted(keyfile):
        priv = load_private_key(keyfile, get_passphrase(confirm=False))
        raw, pem = raw_public(priv), public_pem(priv.public_key())
    else:
        raw = load_public_key(keyfile)
        pem = keyfile.read_bytes()
    click.echo(f"# key id {key_id_for(raw)}")
    click.echo(pem.decode("ascii"), nl=False)


@keys.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--from", "base", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Start from this keyring (the new one gets its version + 1).",
)  # fmt: skip
@click.option(
    "--add", "adds", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust this public key (.pub); repeatable.",
)  # fmt: skip
@click.option("--revoke", "revokes", multiple=True, help="Revoke this key id; repeatable.")
@click.option(
    "--not-after", "not_after", multiple=True, metavar="ID=UNIXTIME",
    help="Key ID is valid for bundles created up to UNIXTIME; repeatable.",
)  # fmt: skip
def keyring(
    out: Path, base: Path | None, adds: tuple[Path, ...], revokes: tuple[str, ...],
    not_after: tuple[str, ...],
) -> None:  # fmt: skip
    """Write keyring OUT: the image's trusted keys, or a rotation payload (--keyring-update)."""
    limits: dict[str, int] = {}
    for item in not_after:
        key_id, _, when = item.partition("=")
        if not when.isdigit():
            raise click.BadParameter(f"{item!r} is not ID=UNIXTIME", param_hint="--not-after")
        limits[key_id] = int(when)
    ring = next_keyring(
        load_keyring_file(base) if base else None,
        [(load_public_key(p), p.stem) for p in adds],
        list(revokes),
        limits,
    )
    atomic_write_bytes(out, ring.to_bytes())
    usable = [k.id for k in ring.keys if not k.revoked]
    click.echo(
        f"keyring {out}: version {ring.version}, {len(ring.keys)} keys, usable: {', '.join(usable)}"
    )


# --- kiln publish -------------------------------------------------------------------------------


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
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
@click.option("--expires-days", type=click.IntRange(1, 3650), default=30, show_default=True,
              help="Targets and snapshot expiry.")  # fmt: skip
@click.option("--timestamp-days", type=click.IntRange(1, 365), default=1, show_default=True,
              help="Timestamp expiry: re-sign at least this often (--refresh).")  # fmt: skip
@click.option("--refresh", is_flag=True, help="REPO_DIR only: re-sign snapshot and timestamp.")
@click.option("--status", "show_status", is_flag=True,
              help="REPO_DIR only: versions, rollout stages and expiries.")  # fmt: skip
@click.option("--hold", is_flag=True, help="No device takes it until `kiln rollout start`.")
@click.option(
    "--deltas",
    type=click.IntRange(0, 20),
    help="Also publish deltas from the last N releases on the channel (needs --key; default "
    "the recipe's update.deltas, else 0).",
)
@click.option(
    "--key",
    "key_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Release key that signs the deltas (passphrase: EDGEKILN_KEY_PASSPHRASE).",
)
@click.option(
    "--max-bundle-mib",
    type=click.IntRange(min=1),
    help="Refuse bundles over this size (default the recipe's update.max_bundle_mib).",
)
@click.option("--allow-oversize", is_flag=True, help="Publish a bundle over --max-bundle-mib.")
@click.option(
    "--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Take --deltas, --max-bundle-mib and --key from this recipe ([update], [signing]) "
    "where those flags are not given.",
)  # fmt: skip
@click.option(
    "--create-keys", is_flag=True,
    help="On the channel's first publish: create its TUF role keys (else a missing key is an "
    "error naming its path).",
)  # fmt: skip
def publish(
    paths: tuple[Path, ...], keys: Path | None, online_keys: Path | None, expires_days: int,
    timestamp_days: int, refresh: bool, show_status: bool, hold: bool, deltas: int | None,
    key_path: Path | None, max_bundle_mib: int | None, allow_oversize: bool,
    recipe: Path | None, create_keys: bool,
) -> None:  # fmt: skip
    """Publish BUNDLE (full or delta) into the TUF repository REPO_DIR.

    \b
    kiln publish BUNDLE REPO_DIR
    kiln publish --refresh REPO_DIR     (cron-friendly: online keys only)
    kiln publish --status REPO_DIR
    """
    from image.release.publish import default_keys_dir

    if refresh or show_status:
        if len(paths) != 1:
            raise click.UsageError("--refresh and --status take REPO_DIR alone")
        from image.release.rollout import Expiries, status
        from image.release.rollout import refresh as do_refresh

        repo = paths[0]
        if refresh:
            expiries = Expiries(expires_days, expires_days, timestamp_days)
            until = do_refresh(repo, keys or default_keys_dir(repo), online_keys, expiries)
            click.echo(f"refreshed {repo}: timestamp valid until {until:%Y-%m-%d %H:%M} UTC")
        if show_status:
            for line in status(repo):
                click.echo(line)
        return
    if len(paths) != 2:
        raise click.UsageError("kiln publish BUNDLE REPO_DIR")
    bundle, repo_dir = paths
    if not bundle.is_file():
        raise click.BadParameter(f"{bundle} is not a file", param_hint="BUNDLE")
    if recipe is not None:
        deltas, max_bundle_mib, key_path = _from_recipe(recipe, deltas, max_bundle_mib, key_path)
    _publish_release(
        bundle, repo_dir, keys, online_keys, expires_days, timestamp_days, hold, deltas or 0,
        key_path, max_bundle_mib, allow_oversize, create_keys,
    )  # fmt: skip
    click.echo(f"TUF keys: {keys or default_keys_dir(repo_dir)} (keep root and targets offline)")


def _from_recipe(
    recipe: Path, deltas: int | None, max_bundle_mib: int | None, key_path: Path | None
) -> tuple[int | None, int | None, Path | None]:
    """(deltas, max_bundle_mib, key): each flag given wins over the recipe's value."""
    from image.recipe import load_recipe

    loaded = load_recipe(recipe, check_files=False)
    u = loaded.recipe.update
    if key_path is None and loaded.recipe.signing.key:
        key_path = loaded.resolve(loaded.recipe.signing.key)
    return (
        u.deltas if deltas is None else deltas,
        u.max_bundle_mib if max_bundle_mib is None else max_bundle_mib,
        key_path,
    )


def _publish_release(
    bundle: Path, repo_dir: Path, keys: Path | None, online_keys: Path | None,
    expires_days: int, timestamp_days: int, hold: bool, deltas: int, key_path: Path | None,
    max_bundle_mib: int | None, allow_oversize: bool, create_keys: bool = False,
) -> None:  # fmt: skip
    """Size limit, automatic deltas from the last N releases, publish, who downloads what."""
    from image.release.autodelta import check_size, make_deltas, previous_releases
    from image.release.publish import publish as do_publish

    check_size(bundle, max_bundle_mib, allow_oversize)
    olds = []
    if deltas:
        if key_path is None:
            raise click.UsageError("--deltas needs --key (the release key signs the deltas)")
        from appliance.bundle import peek_manifest

        with open(bundle, "rb") as f:
            m = peek_manifest(f, source=str(bundle))
        image = next(p.image.sha256 for p in m.payloads if p.kind == "full")
        olds = previous_releases(repo_dir, m.product, m.targets[0], image, deltas)
    made = []
    if olds:
        assert key_path is not None
        made = make_deltas(bundle, olds, load_private_key(key_path, get_passphrase(False)),
                           bundle.parent)  # fmt: skip
    for item in (bundle, *made):
        check_size(item, max_bundle_mib, allow_oversize)
        for path in do_publish(item, repo_dir, keys, expires_days, online_keys,
                               timestamp_days=timestamp_days, hold=hold,
                               create_keys=create_keys):  # fmt: skip
            click.echo(f"published {path}{' (held: kiln rollout start)' if hold else ''}")
    for old, delta in zip(olds, made, strict=True):
        click.echo(f"devices on {old.version} (image {old.image_sha256[:12]}) download "
                   f"{delta.stat().st_size} bytes (delta)")  # fmt: skip
    click.echo(f"any other device downloads {bundle.stat().st_size} bytes (full)")
