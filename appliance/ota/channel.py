"""Poll an update channel (a TUF repository made by ``kiln publish``) with python-tuf's ngclient.

TUF checks freshness, rollback and key rotation of the channel's metadata; the chosen bundle is
then downloaded by :mod:`appliance.ota.fetch` (Range, resumable, chunk-verified against the
bundle's own signature) and its whole-file sha256 compared with the TUF target before install.
The choice: nothing when the current release's image is the active slot; the delta whose base
is the active slot when it leads to that same image; else the full bundle.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.ota.errors import OtaError

log = logging.getLogger(__name__)


class ChannelError(OtaError):
    """The channel's metadata could not be verified or lists no release for this device."""


@dataclass(frozen=True)
class Choice:
    """What to download: the bundle's URL, its TUF path, sha256 and length, and why."""

    kind: str  # "full" or "delta"
    version: str
    url: str
    path: str
    sha256: str
    length: int
    image_sha256: str = ""  # the slot image the bundle leads to
    rollout: dict[str, Any] | None = None  # ``kiln rollout`` stage (image/release/rollout.py)


def _updater(repo_url: str, state_dir: Path, trusted_root: Path):  # type: ignore[no-untyped-def]
    from tuf.ngclient import Updater  # type: ignore[attr-defined]

    meta = state_dir / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    if not (meta / "root.json").exists():
        shutil.copyfile(trusted_root, meta / "root.json")
    base = repo_url.rstrip("/")
    return Updater(
        metadata_dir=str(meta),
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        target_dir=str(state_dir / "targets"),
        bootstrap=None,
    )


def poll(
    repo_url: str,
    state_dir: Path,
    trusted_root: Path,
    product: str,
    target: str,
    active_sha256: str | None,
) -> Choice | None:
    """Refresh the channel and choose a bundle for a device whose active slot is ``active``."""
    from tuf.api.exceptions import DownloadError, RepositoryError

    updater = _updater(repo_url, state_dir, trusted_root)
    try:
        updater.refresh()
        full = updater.get_targetinfo(f"{product}/{target}/full.bundle")
        delta = None
        if active_sha256 is not None:
            delta = updater.get_targetinfo(f"{product}/{target}/delta-{active_sha256[:16]}.bundle")
    except (RepositoryError, DownloadError) as exc:
        raise ChannelError(f"update channel {repo_url}: {_reason(exc)}") from exc
    if full is None:
        raise ChannelError(f"update channel {repo_url} has no release for {product}/{target}")
    full_custom = full.custom.get("edgekiln", {})
    if active_sha256 is not None and full_custom.get("image_sha256") == active_sha256:
        return None
    pick = full
    if delta is not None:
        custom = delta.custom.get("edgekiln", {})
        if (
            custom.get("image_sha256") == full_custom.get("image_sha256")
            and custom.get("base_sha256") == active_sha256
        ):
            pick = delta
    custom = pick.custom.get("edgekiln", {})
    sha = pick.hashes["sha256"]
    parent, _, name = pick.path.rpartition("/")
    url = f"{repo_url.rstrip('/')}/targets/{parent}/{sha}.{name}"
    return Choice(custom.get("kind", "full"), custom.get("version", "?"), url, pick.path, sha,
                  pick.length, str(full_custom.get("image_sha256", "")),
                  full_custom.get("rollout"))  # fmt: skip


def _reason(exc: BaseException) -> str:
    """The error and its causes, named (python-tuf's network errors often carry no text)."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 4:
        text = str(seen).strip()
        parts.append(f"{type(seen).__name__}: {text}" if text else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(parts)


def check_download(path: Path, choice: Choice) -> None:
    """Refuse a downloaded file that is not the TUF target chosen (length and sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    if size != choice.length or digest.hexdigest() != choice.sha256:
        raise ChannelError(
            f"{path} is not the channel's {choice.path} (sha256 {digest.hexdigest()[:16]}..., "
            f"{size} bytes); it was replaced on the server: poll again"
        )
