"""``kiln publish BUNDLE REPO_DIR``: keep a TUF repository (python-tuf Metadata API) of bundles.

The repository is plain files any static HTTP server can serve::

    REPO/metadata/1.root.json, root.json, N.targets.json, N.snapshot.json, timestamp.json
    REPO/targets/<product>/<target>/<sha256>.full.bundle            (consistent snapshots)
    REPO/targets/<product>/<target>/<sha256>.delta-<base16>.bundle

Target paths are ``<product>/<target>/full.bundle`` (the current release) and
``<product>/<target>/delta-<first 16 hex of the base image sha256>.bundle``; each carries
``custom.edgekiln`` = {kind, version, security_version, image_sha256[, base_sha256]}. A device
picks the delta for its active slot when it leads to the current full release's image, else the
full bundle (appliance/ota/channel.py). TUF adds freshness and rollback protection on top of the
bundle signature (docs/decisions.md §5); it never replaces it.

TUF role keys (Ed25519, one per role, PKCS#8 PEM, mode 0600; root and targets encrypted with
``$EDGEKILN_TUF_PASSPHRASE`` when it is set) are created on the first publish, and only when
asked (``--create-keys``): a missing key is otherwise an error naming its path, never a silent
new key. They never live
under or beside a served tree: ``--keys DIR`` holds them, by default ``$EDGEKILN_TUF_KEYS`` or
``~/.config/edgekiln/tuf-keys``, in a folder named for the repository (``<name>-<sha256 of its
absolute path, 12 hex>``). Keys are refused inside ``REPO_DIR`` always, and inside
``REPO_DIR``'s parent unless given explicitly (a web server pointed at the parent served
``REPO.keys/targets.pem``, the private key, with the old default).

Which key is where, in production: **root** and **targets** are offline keys (an air-gapped
signing machine or a hardware token: whoever holds targets decides what devices install, root
rotates every other key); **snapshot** and **timestamp** are online keys (the publishing host
re-signs them on every publish and ``kiln publish --refresh`` re-signs them alone, e.g. from
cron; the timestamp expires after ``--timestamp-days``, 1 by default), so
``--online-keys DIR`` may keep those two apart from the offline pair. A stolen online key lets
an attacker freeze or replay the channel's view, never choose a bundle: that needs targets,
and the device still checks every bundle's own Ed25519 signature (docs/decisions.md §5).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from image.errors import BuildError

log = logging.getLogger(__name__)
ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("snapshot", "timestamp")


class PublishError(BuildError):
    """The bundle could not be published (unreadable bundle, damaged repository or keys)."""


TUF_PASSPHRASE_ENV = "EDGEKILN_TUF_PASSPHRASE"  # noqa: S105 - the variable's name


def _offline_passphrase(role: str) -> bytes | None:
    """The passphrase of the offline pair (root, targets) from the environment, if set."""
    value = os.environ.get(TUF_PASSPHRASE_ENV)
    return value.encode() if value and role not in ONLINE_ROLES else None


def load_tuf_key(path: Path, role: str) -> Any:
    """A role's signer from its PEM (offline keys may be encrypted: $EDGEKILN_TUF_PASSPHRASE)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

    pem = path.read_bytes()
    encrypted = b"ENCRYPTED" in pem.split(b"\n", 1)[0]
    passphrase = _offline_passphrase(role) if encrypted else None
    if encrypted and passphrase is None:
        raise PublishError(
            f"the {role} key {path} is encrypted: set {TUF_PASSPHRASE_ENV} to its passphrase"
        )
    try:
        return CryptoSigner(load_pem_private_key(pem, passphrase))
    except (ValueError, TypeError) as exc:
        raise PublishError(
            f"cannot load the {role} key {path}: {exc} (wrong passphrase?)"
        ) from None


def _signer(keys: Path, role: str, create: bool = False) -> Any:
    """A role's signer; its key is created only with ``create`` (the channel's first publish)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    path = keys / f"{role}.pem"
    if not path.exists() and not create:
        raise PublishError(
            f"the TUF {role} key {path} does not exist: on a channel's first publish pass "
            "--create-keys to create its role keys there; otherwise pass --keys (and "
            "--online-keys) naming the folders that hold them"
        )
    if not path.exists():
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
        passphrase = _offline_passphrase(role)
        encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
        pem = Ed25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, encryption
        )
        path.write_bytes(pem)
        path.chmod(0o600)
    return load_tuf_key(path, role)


def _expiry(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


def _target_paths(manifest: Any) -> tuple[str, dict[str, Any]]:
    """(file name stem, custom data) for the bundle's image payload."""
    image = [p for p in manifest.payloads if p.kind in ("full", "delta")]
    if not image:
        raise PublishError("the bundle carries no slot image (full or delta): nothing to publish")
    p = image[0]
    custom: dict[str, Any] = {
        "kind": p.kind,
        "version": manifest.version,
        "security_version": manifest.security_version,
        "image_sha256": p.image.sha256,
    }
    if p.kind == "delta":
        custom["base_sha256"] = p.base.sha256
        return f"delta-{p.base.sha256[:16]}.bundle", custom
    return "full.bundle", custom


def default_keys_dir(repo: Path) -> Path:
    """Where ``kiln publish`` keeps ``repo``'s TUF keys when ``--keys`` is not given."""
    env = os.environ.get("EDGEKILN_TUF_KEYS")
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    base = Path(env) if env else Path(config) / "edgekiln" / "tuf-keys"
    where = repo.resolve()
    return base / f"{where.name}-{hashlib.sha256(str(where).encode()).hexdigest()[:12]}"


def check_keys_dir(repo: Path, keys: Path, *, explicit: bool, what: str = "--keys") -> None:
    """Refuse a keys folder a web server serving ``repo`` (or its parent) could hand out."""
    served, place = repo.resolve(), keys.resolve()
    if place.is_relative_to(served):
        raise PublishError(
            f"{what} {keys} is inside the repository {repo}, which is served as it is: the "
            "private keys would be public; keep them outside any served folder"
        )
    if not explicit and place.is_relative_to(served.parent):
        raise PublishError(
            f"the default TUF keys folder {keys} is inside {served.parent}, the repository's "
            "parent (served trees often start there); pass --keys DIR outside any served folder"
        )
    if explicit and place.is_relative_to(served.parent):
        log.warning("TUF keys %s sit beside the served repository %s: never serve %s", keys,
                    repo, served.parent)  # fmt: skip


class Repo:
    """The four top-level roles of one repository directory."""

    def __init__(
        self, repo: Path, keys: Path, days: int, online_keys: Path | None = None,
        timestamp_days: int = 1, *, create_keys: bool = False,
    ) -> None:  # fmt: skip
        self.repo = repo
        self.timestamp_days = timestamp_days
        self.meta = repo / "metadata"
        self.keys = keys
        self.days = days
        self.signers = {
            role: _signer(
                online_keys if online_keys and role in ONLINE_ROLES else keys, role, create_keys
            )
            for role in ROLES
        }

    def _write(self, md: Any, name: str) -> None:
        from tuf.api.serialization.json import JSONSerializer

        md.signatures.clear()
        role = md.signed.type
        md.sign(self.signers[role], append=True)
        md.to_file(str(self.meta / name), JSONSerializer(compact=False))

    def init(self) -> None:
        """Create root (consistent snapshots), empty targets, snapshot and timestamp."""
        from tuf.api.metadata import (  # type: ignore[attr-defined]
            Metadata,
            Root,
            Snapshot,
            Targets,
            Timestamp,
        )

        self.meta.mkdir(parents=True, exist_ok=True)
        root = Metadata(Root(expires=_expiry(365), consistent_snapshot=True))
        for role in ROLES:
            key = self.signers[role].public_key
            root.signed.add_key(key, role)
        self._write(root, "1.root.json")
        shutil.copyfile(self.meta / "1.root.json", self.meta / "root.json")
        self._write(Metadata(Targets(expires=_expiry(self.days))), "1.targets.json")
        self._write(Metadata(Snapshot(expires=_expiry(self.days))), "1.snapshot.json")
        self._write(Metadata(Timestamp(expires=_expiry(self.timestamp_days))), "timestamp.json")

    def load(self, role: str) -> Any:
        """The newest metadata of ``role``."""
        from tuf.api.metadata import Metadata

        if role == "timestamp":
            return Metadata.from_file(str(self.meta / "timestamp.json"))
        ts: Any = Metadata.from_file(str(self.meta / "timestamp.json"))
        snap_version = ts.signed.snapshot_meta.version
        if role == "snapshot":
            return Metadata.from_file(str(self.meta / f"{snap_version}.snapshot.json"))
        snap: Any = Metadata.from_file(str(self.meta / f"{snap_version}.snapshot.json"))
        version = snap.signed.meta["targets.json"].version
        return Metadata.from_file(str(self.meta / f"{version}.targets.json"))

    def add(self, path: str, bundle: Path, custom: dict[str, Any]) -> None:
        """Add or replace target ``path`` and re-sign targets, snapshot and timestamp."""
        from tuf.api.metadata import MetaFile, TargetFile  # type: ignore[attr-defined]

        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        dest = self.repo / "targets" / Path(path).parent / f"{digest}.{Path(path).name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bundle, dest)
        targets = self.load("targets")
        info = TargetFile.from_file(path, str(dest), ["sha256"])
        info.unrecognized_fields["custom"] = {"edgekiln": custom}
        targets.signed.targets[path] = info
        targets.signed.version += 1
        targets.signed.expires = _expiry(self.days)
        self._write(targets, f"{targets.signed.version}.targets.json")
        snapshot = self.load("snapshot")
        snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
        snapshot.signed.version += 1
        snapshot.signed.expires = _expiry(self.days)
        self._write(snapshot, f"{snapshot.signed.version}.snapshot.json")
        timestamp = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        timestamp.signed.version += 1
        timestamp.signed.expires = _expiry(self.timestamp_days)
        self._write(timestamp, "timestamp.json")


def publish(
    bundle: Path,
    repo: Path,
    keys: Path | None = None,
    days: int = 30,
    online_keys: Path | None = None,
    *,
    timestamp_days: int = 1,
    hold: bool = False,
    create_keys: bool = False,
) -> list[str]:
    """Add ``bundle`` to the TUF repository at ``repo`` (created on first use); target paths.

    ``keys``: the role keys (default :func:`default_keys_dir`); ``online_keys``: snapshot and
    timestamp keys kept apart from root and targets (default: in ``keys``). ``hold``: no
    device takes the release until ``kiln rollout start`` (image/release/rollout.py).
    ``create_keys``: create missing role keys, only when the repository is new (a key created
    for an existing channel is not one its root trusts); else a missing key is an error.
    """
    old = repo.with_name(repo.name + ".keys")
    if keys is None and old.exists():
        raise PublishError(
            f"{old} holds TUF keys beside the repository (the old default: served from "
            f"{repo.resolve().parent} it hands out the private keys); move it outside any "
            "served folder and pass --keys DIR"
        )
    keys_dir = keys if keys is not None else default_keys_dir(repo)
    check_keys_dir(repo, keys_dir, explicit=keys is not None)
    if online_keys is not None:
        check_keys_dir(repo, online_keys, explicit=True, what="--online-keys")
    from appliance.bundle import peek_manifest
    from appliance.bundle.errors import BundleError

    try:
        with open(bundle, "rb") as f:
            manifest = peek_manifest(f, source=str(bundle))
    except (OSError, BundleError) as exc:
        raise PublishError(f"cannot read bundle {bundle}: {exc}") from None
    name, custom = _target_paths(manifest)
    if hold:
        custom["rollout"] = {"state": "held", "stages": [], "stage": 0, "sites": []}
    new = not (repo / "metadata" / "timestamp.json").exists()
    r = Repo(repo, keys_dir, days, online_keys, timestamp_days, create_keys=create_keys and new)
    if new:
        r.init()
    paths = [f"{manifest.product}/{target}/{name}" for target in manifest.targets]
    for path in paths:
        r.add(path, bundle, custom)
    return paths
