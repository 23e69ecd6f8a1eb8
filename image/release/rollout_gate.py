"""``kiln rollout advance --db URL``: the fleet's verdict on the current stage before the next.

The stage's devices are those the fleet store knows (``kiln fleet`` ingest) on one of the
release's targets, at an allowed site, whose rollout bucket for this release is below the
current stage's percentage: the same rule the device applies (:mod:`appliance.ota.rollout`).
:func:`image.fleet.gates.stage_gate` then judges them since the stage started (the rollout's
``since``, written by ``start`` and ``advance``): every device committed, the rollback rate
at most the limit, no drift, no peer anomaly. A refused advance names every reason; ``--force``
advances anyway (and says what it overrode). ``kiln rollout status --db`` pauses on the same
verdict's ``halt`` (:mod:`image.release.rollout_halt`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image.release.rollout import Channel, RolloutError, releases


class GateRefusedError(RolloutError):
    """The fleet's gate refuses to advance the rollout (reasons in the message)."""


@dataclass(frozen=True)
class GateLimits:
    """Rollback rates (0-1): refuse to advance past ``max_rate``; over ``halt_rate`` the
    rollout should be paused or aborted rather than advanced."""

    max_rate: float = 0.05
    halt_rate: float = 0.2


@dataclass(frozen=True)
class Judgement:
    """The gate's verdict on one rollout stage, with the devices it judged."""

    version: str
    stage_percent: int
    devices: list[str]
    advance: bool
    halt: bool
    committed: int
    rolled_back: int
    reasons: list[str]
    rolled_back_devices: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What ``kiln rollout advance`` prints about the gate."""
        head = (
            f"{self.version}: fleet gate at {self.stage_percent} %: {len(self.devices)} devices "
            f"in the stage, {self.committed} committed, {self.rolled_back} rolled back"
        )
        return [head, *(f"  - {r}" for r in self.reasons)]


def release_targets(repo: Path, version: str) -> tuple[dict[str, Any] | None, list[str]]:
    """(the release's rollout or None, its hardware targets) from the channel's signed targets."""
    channel = Channel(repo, repo, None)  # reading needs no key
    found = releases(channel.load("targets")).get(version)
    if not found:
        raise RolloutError(f"{repo} has no release {version} (kiln publish --status lists them)")
    rollout = found[0][1].custom.get("edgekiln", {}).get("rollout")
    # target paths are <product>/<target>/<file>
    return rollout, sorted({path.split("/")[1] for path, _ in found if path.count("/") >= 2})


def current_rollout(repo: Path, version: str) -> tuple[dict[str, Any], list[str]]:
    """(the release's rollout, its hardware targets); a release without one is an error."""
    rollout, targets = release_targets(repo, version)
    if rollout is None:
        raise RolloutError(f"{version} has no rollout (it is for every device): start one first")
    return rollout, targets


def judge(repo: Path, version: str, db_url: str, limits: GateLimits) -> Judgement:
    """The fleet's verdict on ``version``'s current stage (fleet store at ``db_url``)."""
    from appliance.ota.rollout import bucket, percent
    from image.fleet.gates import stage_gate
    from image.fleet.store import Store

    rollout, targets = current_rollout(repo, version)
    pct = percent(rollout)
    sites = set(rollout.get("sites") or [])
    store = Store.open(db_url)
    try:
        rows = store.query("SELECT device, site, target FROM devices ORDER BY device")
        stage = [
            device
            for device, site, target in rows
            if target in targets and (not sites or site in sites) and bucket(device, version) < pct
        ]
        verdict = stage_gate(
            store, stage, since=float(rollout.get("since", 0.0)),
            max_rollback_rate=limits.max_rate, halt_rollback_rate=limits.halt_rate,
            version=version,
        )  # fmt: skip
    finally:
        store.close()
    reasons = list(verdict.reasons)
    if verdict.halt:
        reasons.append(
            f"rollback rate over {limits.halt_rate:.0%}: pause or abort the rollout "
            f"(kiln rollout pause {version} REPO_DIR)"
        )
    return Judgement(
        version, pct, stage, verdict.advance and not verdict.halt, verdict.halt,
        verdict.committed, verdict.rolled_back, reasons, verdict.rolled_back_devices,
    )  # fmt: skip


def refuse_unless(passed: bool, lines: list[str], *, force: bool, what: str = "advance") -> None:
    """Raise :class:`GateRefusedError` with ``lines`` unless ``passed`` or ``force``."""
    if passed or force:
        return
    raise GateRefusedError(
        "\n".join([*lines, f"refused to {what}: fix the above, or pass --force to override"])
    )
