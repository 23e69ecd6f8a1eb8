"""``kiln publish --deltas N --key KEY``: deltas to a new release from the last N on the channel.

The channel keeps every full bundle it published (consistent snapshots: ``targets/<product>/
<target>/<sha256>.full.bundle``) and every targets metadata version. The last ``N`` distinct
images before the new one are found there (newest first), each one's slot image is extracted
(the bundle's signature checked with the release key's public half) and a signed delta
(``ekdelta1``) from it to the new image is written beside the new bundle, then published: a
device on any of those releases downloads the delta, others the full bundle.

Also here: the size limit (``--max-bundle-mib``, or the recipe's ``update.max_bundle_mib``),
refused unless ``--allow-oversize``, and the table of what each device generation downloads.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from image.release.publish import PublishError


@dataclass(frozen=True)
class Generation:
    """A release already on the channel: its version, image digest and full bundle file."""

    version: str
    image_sha256: str
    bundle: Path


def previous_releases(
    repo: Path, product: str, target: str, skip_image: str, n: int
) -> list[Generation]:
    """The last ``n`` distinct full releases of ``product/target`` on the channel, newest first."""
    path = f"{product}/{target}/full.bundle"
    found: list[Generation] = []
    seen = {skip_image}
    versions = sorted(
        (int(p.name.split(".")[0]), p) for p in (repo / "metadata").glob("*.targets.json")
    )
    for _, meta in reversed(versions):
        info = json.loads(meta.read_bytes())["signed"]["targets"].get(path)
        if info is None:
            continue
        custom: dict[str, Any] = info.get("custom", {}).get("edgekiln", {})
        image = str(custom.get("image_sha256", ""))
        if not image or image in seen:
            continue
        seen.add(image)
        bundle = repo / "targets" / product / target / f"{info['hashes']['sha256']}.full.bundle"
        if bundle.is_file():
            found.append(Generation(str(custom.get("version", "?")), image, bundle))
        if len(found) >= n:
            break
    return found


def make_deltas(new_bundle: Path, olds: list[Generation], key: Any, out_dir: Path) -> list[Path]:
    """One signed delta bundle per old release, from its image to ``new_bundle``'s image."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from appliance.bundle import PayloadSource, peek_manifest, write_bundle
    from appliance.bundle.delta_base import resolve_base
    from appliance.bundle.errors import BundleError
    from appliance.bundle.keyring import Keyring, TrustedKey
    from appliance.fsutil import atomic_writer

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ring = Keyring(1, (TrustedKey.from_public_key(raw),))
    with open(new_bundle, "rb") as f:
        m = peek_manifest(f, source=str(new_bundle))
    out: list[Path] = []
    with contextlib.ExitStack() as stack:
        try:
            new_image = resolve_base(new_bundle, ring, stack)
            for old in olds:
                base = resolve_base(old.bundle, ring, stack)
                dest = out_dir / f"{new_bundle.stem}.delta-from-{old.version}.bundle"
                with atomic_writer(dest) as handle:
                    write_bundle(
                        handle, key=key, product=m.product, targets=list(m.targets),
                        version=m.version, security_version=m.security_version,
                        created=m.created, expires=m.expires, chunk_size=m.chunk_size,
                        payloads=[PayloadSource.delta(new_image, base)], spool_dir=out_dir,
                    )  # fmt: skip
                out.append(dest)
        except BundleError as exc:
            raise PublishError(f"cannot make a delta to {new_bundle}: {exc}") from None
    return out


def check_size(bundle: Path, max_mib: int | None, allow_oversize: bool) -> None:
    """Refuse a bundle larger than what devices on this recipe download, unless allowed."""
    size = bundle.stat().st_size
    if max_mib is not None and size > max_mib << 20 and not allow_oversize:
        raise PublishError(
            f"{bundle} is {size} bytes, over the {max_mib} MiB devices take "
            "(update.max_bundle_mib): they would refuse it; publish a delta, raise the limit, "
            "or pass --allow-oversize"
        )
