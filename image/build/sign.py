"""Signing material for a build: the release key that signs the image manifest, and the keyring.

The recipe's ``signing.key`` names an Ed25519 key file made by ``kiln keys`` (passphrase from
``EDGEKILN_KEY_PASSPHRASE``). Without one, a development key is created once in the cache
(``<cache>/keys/dev.key``, fixed passphrase below): fine for QEMU, never for devices in the field.
The keyring installed into the image trusts exactly the public half of the signing key.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from image import cache
from image.recipe import LoadedRecipe

log = logging.getLogger(__name__)

DEV_KEY_NAME = "dev"
DEV_PASSPHRASE = b"edgekiln-development-only"


def dev_key_path(cache_dir: Path) -> Path:
    """Where the development key lives (created on first use)."""
    return cache_dir / "keys" / f"{DEV_KEY_NAME}.key"


def signing_material(
    loaded: LoadedRecipe, cache_dir: Path | None = None
) -> tuple[Ed25519PrivateKey, bytes]:
    """(release private key, keyring bytes to install) for this recipe."""
    from image.build.identity import default_cache_dir
    from image.release import keys

    if loaded.recipe.signing.key:
        path = loaded.resolve(loaded.recipe.signing.key)
        passphrase = keys.passphrase_from_env()
        if passphrase is None:
            raise keys.KeyFileError(
                f"{loaded.path}: signing.key {path} needs its passphrase in {keys.PASSPHRASE_ENV}"
            )
        private = keys.load_private_key(path, passphrase)
        comment = path.stem
    else:
        path = dev_key_path((cache_dir or default_cache_dir()).resolve())
        # Builds sharing the cache start together: one creates the key, the others wait for it.
        with cache.locked(path.with_name(f".{DEV_KEY_NAME}.lock")):
            if not path.exists():
                log.warning("no signing.key in the recipe: creating development key %s", path)
                keys.create_key(DEV_KEY_NAME, path.parent, DEV_PASSPHRASE)
        private = keys.load_private_key(path, DEV_PASSPHRASE)
        comment = "development key (not for production)"
    raw = keys.raw_public(private)
    ring = keys.next_keyring(None, [(raw, comment)], [])
    return private, ring.to_bytes()
