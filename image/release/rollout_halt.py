"""``kiln rollout status --db URL``: pause every rollout whose stage rolls back too often.

For each release whose rollout is ``active``, the fleet gate (:func:`rollout_gate.judge`, the
same verdict ``advance --db`` uses) judges the current stage; past the halt rate the rollout is
paused exactly as ``kiln rollout pause`` does (:func:`rollout.change`: the signed targets
metadata, re-signed with the targets key, then snapshot and timestamp). A paused rollout admits
0 %: no new device takes the release; devices that committed stay, nobody is downgraded.

A halt that is due but cannot be written (the targets key is missing, or encrypted and
``EDGEKILN_TUF_PASSPHRASE`` is not set, or ``--no-halt``) is never silent: it raises
:class:`HaltNotDoneError` (exit status 3) naming the release, the figures and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image.release.publish import PublishError
from image.release.rollout import Channel, Expiries, RolloutError, change, releases
from image.release.rollout_gate import GateLimits, Judgement, judge


class HaltNotDoneError(RolloutError):
    """A rollout is past its halt rate and was not paused (reasons in the message)."""

    exit_code = 3


@dataclass(frozen=True)
class Halt:
    """One rollout past the halt rate: its verdict, and whether it was paused."""

    judgement: Judgement
    rate: float
    limit: float
    paused: bool
    error: str = ""

    def lines(self) -> list[str]:
        """What ``kiln rollout status`` prints about it."""
        j = self.judgement
        what = "HALTED: rollout paused" if self.paused else "HALT DUE: rollout NOT paused"
        return [
            f"{j.version}: {what}: rollback rate {self.rate:.1%} over the halt limit "
            f"{self.limit:.1%} ({j.rolled_back} of {len(j.devices)} devices of the "
            f"{j.stage_percent} % stage rolled back, {j.committed} committed)",
            f"  rolled back: {', '.join(j.rolled_back_devices)}",
            *([f"  not paused: {self.error}"] if self.error else []),
        ]


def active_versions(repo: Path) -> list[str]:
    """The releases whose rollout is ``active`` (the only state that admits devices)."""
    found = releases(Channel(repo, repo, None).load("targets"))
    return [
        version
        for version, targets in found.items()
        if (targets[0][1].custom.get("edgekiln", {}).get("rollout") or {}).get("state") == "active"
    ]


def check_and_halt(
    repo: Path, db_url: str, limits: GateLimits, *, keys: Path, online_keys: Path | None,
    expiries: Expiries, halt: bool = True,
) -> tuple[list[Judgement], list[Halt]]:  # fmt: skip
    """Judge every active rollout; pause those past ``limits.halt_rate`` (unless not ``halt``).

    Returns (every judgement, the halts). Raises :class:`HaltNotDoneError` after trying all of
    them when any halt that was due was not written.
    """
    judgements, halts = [], []
    for version in active_versions(repo):
        j = judge(repo, version, db_url, limits)
        judgements.append(j)
        if not j.halt:
            continue
        rate = j.rolled_back / max(len(j.devices), 1)
        if not halt:
            halts.append(Halt(j, rate, limits.halt_rate, False, "--no-halt was given"))
            continue
        try:
            change(repo, keys, online_keys, version, "pause", expiries)
        except PublishError as exc:  # the key: missing, encrypted without passphrase, wrong
            halts.append(Halt(j, rate, limits.halt_rate, False, str(exc)))
            continue
        halts.append(Halt(j, rate, limits.halt_rate, True))
    missed = [h for h in halts if not h.paused]
    if missed:
        raise HaltNotDoneError(
            "\n".join(
                [line for h in halts for line in h.lines()]
                + [
                    f"a halt was due for {', '.join(h.judgement.version for h in missed)} and "
                    "was not written: pause by hand (kiln rollout pause VERSION REPO_DIR) or "
                    "give the targets key (--keys; EDGEKILN_TUF_PASSPHRASE if it is encrypted)"
                ]
            )
        )
    return judgements, halts
