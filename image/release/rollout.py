"""``kiln rollout`` and ``kiln publish --refresh / --status``: the channel after a publish.

**Staged rollout.** ``custom.edgekiln.rollout`` on every target of one release (its full bundle
and its deltas) in the signed targets metadata: ``{"state", "stages", "stage", "sites"}``
(the device side, and what each state admits: appliance/ota/rollout.py). ``start`` opens
stage 0, ``advance`` moves to the next stage, ``pause`` stops new installs (0 %) until
``resume``, ``abort`` stops them for good (devices that committed stay; nobody is
downgraded). Each change re-signs targets (the **offline** targets key), snapshot and
timestamp.

**Refresh.** ``refresh`` re-signs snapshot and timestamp only (the **online** keys: cron on the
publishing host, e.g. hourly, keeps a 1-day timestamp fresh without touching targets).

Keys are never created here: a missing role key is an error (``kiln publish`` creates them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from image.release.publish import PublishError

STATES = ("active", "paused", "aborted", "held")


class RolloutError(PublishError):
    """A rollout command that does not fit the release's rollout state."""


@dataclass(frozen=True)
class Expiries:
    """How long each re-signed role stays valid, in days."""

    targets: int = 30
    snapshot: int = 30
    timestamp: int = 1


def _existing_signer(keys: Path, role: str) -> Any:
    from image.release.publish import load_tuf_key

    path = keys / f"{role}.pem"
    if not path.is_file():
        raise PublishError(
            f"the {role} key {path} is not there: pass --keys (root, targets) or "
            "--online-keys (snapshot, timestamp) pointing at the folder kiln publish made"
        )
    return load_tuf_key(path, role)


def _expiry(days: int) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


class Channel:
    """The newest metadata of one repository and the signers it needs (loaded lazily)."""

    def __init__(self, repo: Path, keys: Path, online_keys: Path | None = None) -> None:
        self.repo = repo
        self.meta = repo / "metadata"
        self.keys = keys
        self.online = online_keys or keys
        if not (self.meta / "timestamp.json").exists():
            raise PublishError(
                f"{repo} is not a channel (no metadata/timestamp.json): publish first"
            )

    def load(self, role: str) -> Any:
        """The newest metadata of ``role`` (timestamp -> snapshot -> targets)."""
        from tuf.api.metadata import Metadata

        ts: Any = Metadata.from_file(str(self.meta / "timestamp.json"))
        if role == "timestamp":
            return ts
        snap: Any = Metadata.from_file(
            str(self.meta / f"{ts.signed.snapshot_meta.version}.snapshot.json")
        )
        if role == "snapshot":
            return snap
        version = snap.signed.meta["targets.json"].version
        return Metadata.from_file(str(self.meta / f"{version}.targets.json"))

    def _write(self, md: Any, name: str, keys: Path) -> None:
        from tuf.api.serialization.json import JSONSerializer

        md.signatures.clear()
        md.sign(_existing_signer(keys, md.signed.type), append=True)
        md.to_file(str(self.meta / name), JSONSerializer(compact=False))

    def resign(self, targets: Any | None, expiries: Expiries) -> None:
        """Write ``targets`` (if given) and a new snapshot and timestamp that point at it."""
        from tuf.api.metadata import MetaFile  # type: ignore[attr-defined]

        snapshot = self.load("snapshot")
        if targets is not None:
            targets.signed.version += 1
            targets.signed.expires = _expiry(expiries.targets)
            self._write(targets, f"{targets.signed.version}.targets.json", self.keys)
            snapshot.signed.meta["targets.json"] = MetaFile(targets.signed.version)
        snapshot.signed.version += 1
        snapshot.signed.expires = _expiry(expiries.snapshot)
        self._write(snapshot, f"{snapshot.signed.version}.snapshot.json", self.online)
        timestamp = self.load("timestamp")
        timestamp.signed.snapshot_meta = MetaFile(snapshot.signed.version)
        timestamp.signed.version += 1
        timestamp.signed.expires = _expiry(expiries.timestamp)
        self._write(timestamp, "timestamp.json", self.online)


def refresh(repo: Path, keys: Path, online_keys: Path | None, expiries: Expiries) -> datetime:
    """Re-sign snapshot and timestamp (online keys only); the timestamp's new expiry."""
    channel = Channel(repo, keys, online_keys)
    channel.resign(None, expiries)
    return channel.load("timestamp").signed.expires  # type: ignore[no-any-return]


def releases(targets: Any) -> dict[str, list[tuple[str, Any]]]:
    """version -> [(target path, TargetFile)] of the targets metadata."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for path, info in sorted(targets.signed.targets.items()):
        version = str(info.custom.get("edgekiln", {}).get("version", "?"))
        out.setdefault(version, []).append((path, info))
    return out


def parse_stages(text: str) -> list[int]:
    """``1,10,50,100`` -> [1, 10, 50, 100] (strictly increasing percentages)."""
    try:
        stages = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise RolloutError(
            f"--stages {text!r}: percentages separated by commas, e.g. 1,10,50,100"
        ) from None
    if not stages or any(not 0 <= s <= 100 for s in stages) or stages != sorted(set(stages)):
        raise RolloutError(f"--stages {text!r}: strictly increasing percentages from 0 to 100")
    return stages


def change(
    repo: Path, keys: Path, online_keys: Path | None, version: str, action: str,
    expiries: Expiries, stages: list[int] | None = None, sites: list[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Apply ``action`` (start, advance, pause, resume, abort) to ``version``'s rollout."""
    channel = Channel(repo, keys, online_keys)
    targets = channel.load("targets")
    found = releases(targets).get(version)
    if not found:
        raise RolloutError(f"{repo} has no release {version} (kiln publish --status lists them)")
    current = found[0][1].custom.get("edgekiln", {}).get("rollout")
    new = _next(current, action, version, stages, sites or [])
    for _path, info in found:
        info.unrecognized_fields.setdefault("custom", {}).setdefault("edgekiln", {})["rollout"] = (
            new
        )
    channel.resign(targets, expiries)
    return new


def _next(
    current: dict[str, Any] | None, action: str, version: str, stages: list[int] | None,
    sites: list[str],
) -> dict[str, Any]:  # fmt: skip
    if action == "start":
        if stages is None:
            raise RolloutError("kiln rollout start needs --stages, e.g. --stages 1,10,50,100")
        # since: when the stage started (the fleet gate judges the stage's devices from then)
        return {"state": "active", "stages": stages, "stage": 0, "sites": sites,
                "since": int(time.time())}  # fmt: skip
    if current is None:
        raise RolloutError(f"{version} has no rollout (it is for every device): start one first")
    state = current.get("state")
    new = dict(current)
    if action == "advance":
        if state != "active":
            raise RolloutError(f"{version}'s rollout is {state}: only an active rollout advances")
        if current["stage"] + 1 >= len(current["stages"]):
            raise RolloutError(f"{version} is at its last stage ({current['stages'][-1]} %)")
        new["stage"] = current["stage"] + 1
        new["since"] = int(time.time())
    elif action == "pause":
        if state != "active":
            raise RolloutError(f"{version}'s rollout is {state}: only an active rollout pauses")
        new["state"] = "paused"
    elif action == "resume":
        if state != "paused":
            raise RolloutError(f"{version}'s rollout is {state}: only a paused rollout resumes")
        new["state"] = "active"
    elif action == "abort":
        new["state"] = "aborted"
    else:
        raise RolloutError(f"unknown rollout action {action!r}")
    return new


def status(repo: Path) -> list[str]:
    """Lines: each role's version and expiry, then each release's targets and rollout."""
    from appliance.ota.rollout import percent

    channel = Channel(repo, repo, None)  # reading needs no key
    lines = []
    for role in ("timestamp", "snapshot", "targets"):
        md = channel.load(role)
        left = md.signed.expires - datetime.now(UTC)
        flag = "EXPIRED" if left.total_seconds() < 0 else f"in {_span(left)}"
        when = f"{md.signed.expires:%Y-%m-%d %H:%M} UTC"
        lines.append(f"{role:9} v{md.signed.version:<4} expires {when} ({flag})")
    for version, found in releases(channel.load("targets")).items():
        rollout = found[0][1].custom.get("edgekiln", {}).get("rollout")
        if rollout is None:
            where = "every device (no rollout)"
        else:
            stages = ",".join(str(s) for s in rollout.get("stages", []))
            sites = ",".join(rollout.get("sites") or []) or "all sites"
            where = (f"rollout {rollout.get('state')} at {percent(rollout)} % "
                     f"(stage {rollout.get('stage', 0) + 1} of {stages}; {sites})")  # fmt: skip
        lines.append(f"release {version}: {where}")
        for path, info in found:
            kind = info.custom.get("edgekiln", {}).get("kind", "?")
            lines.append(f"  {kind:5} {info.length:>12} bytes  {path}")
    return lines


def _span(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.0f} days"
