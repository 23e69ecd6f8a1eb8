"""The image manifest (``<image>.manifest.json``) and its detached signature (``.manifest.sig``).

The manifest is canonical JSON: product, version, ``security_version``, target, the recipe's
digest, the image's size and the digest of its .bmap (which holds a SHA-256 per mapped range,
so it pins the whole image without hashing gigabytes of holes again), every partition with its
digest, and the components (kernel, base, runtime, models and what was done to them).
``kiln inspect`` checks the signature with the image's own keyring.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.fsutil import atomic_write_bytes
from image.build.rootfs import file_digest
from image.recipe import LoadedRecipe, canonical_json


def manifest_body(
    loaded: LoadedRecipe,
    image: Path,
    partitions: dict[str, Any],
    components: dict[str, Any],
    epoch: int,
    image_format: int,
) -> bytes:
    """The manifest's canonical bytes (what the signature covers)."""
    r = loaded.recipe
    doc = {
        "format": image_format,
        "product": r.product,
        "version": r.version,
        "security_version": r.security_version,
        "target": r.target.name,
        "arch": r.target.arch,
        "recipe_digest": loaded.digest,
        "image": {
            "name": image.name,
            "size": image.stat().st_size,
            "bmap_sha256": file_digest(image.with_suffix(".bmap")),
        },
        "partitions": partitions,
        "components": components,
        "epoch": epoch,
    }
    return canonical_json(doc)


def sign_manifest(manifest: Path, body: bytes, key: Ed25519PrivateKey) -> tuple[Path, str]:
    """Write ``<name>.sig`` beside ``manifest`` (key id + Ed25519 signature of ``body``)."""
    from appliance.bundle.keyring import key_id_for
    from image.release.keys import raw_public

    key_id, signature = key_id_for(raw_public(key)), key.sign(body)
    sig = manifest.with_name(manifest.name.removesuffix(".json") + ".sig")
    doc = {"key_id": key_id, "signature": signature.hex()}
    atomic_write_bytes(sig, json.dumps(doc).encode() + b"\n")
    return sig, key_id
