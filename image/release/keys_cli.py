"""``kiln keys new|export|keyring``: release keys and device keyrings."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.bundle.keyring import key_id_for
from appliance.fsutil import atomic_write_bytes
from image.release.keys import (
    MIN_PASSPHRASE,
    PASSPHRASE_ENV,
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
