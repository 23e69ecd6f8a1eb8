"""``kiln rollout start|advance|pause|resume|abort|status``: staged rollouts of a release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

REPO = click.argument("repo_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
KEYS = click.option(
    "--keys", type=click.Path(file_okay=False, path_type=Path),
    help="TUF role keys (targets signs the rollout; default as kiln publish).",
)  # fmt: skip
ONLINE = click.option("--online-keys", type=click.Path(file_okay=False, path_type=Path),
                      help="Snapshot and timestamp keys, if kept apart.")  # fmt: skip
DAYS = click.option("--expires-days", type=click.IntRange(1, 3650), default=30, show_default=True)
FORCE = click.option("--force", is_flag=True,
                     help="Go ahead even when the fleet gate or a site check refuses.")  # fmt: skip


def site_options(f: Any) -> Any:
    """--site-check and what it needs (image/release/rollout_sites.py)."""
    for option in reversed([
        click.option(
            "--site-check", "site_checks", multiple=True, metavar="SITE=DATA[:OLD_PKG:NEW_PKG]",
            help="Refuse unless kiln model compare passes on SITE's images (.npz): the models "
            "of the release SITE runs vs this release's, from their bundles on the channel "
            "(or the two packages named). Repeatable.",
        ),
        click.option("--release-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="The release key's .pub (or a keyring .json): checks the bundles "
                     "the site checks read the models from."),
        click.option("--baseline", metavar="VERSION",
                     help="The release the sites run now (default: from --db)."),
        click.option("--max-accuracy-drop", type=click.FloatRange(0, 1), default=0.01,
                     show_default=True, help="Site checks: the top-1 drop allowed (0.01 = 1 pp)."),
    ]):  # fmt: skip
        f = option(f)
    return f


def _site_lines(
    repo: Path, version: str, specs: tuple[str, ...], rollout_sites: list[str],
    targets: list[str], release_key: Path | None, baseline: str | None, db_url: str | None,
    max_drop: float,
) -> tuple[bool, list[str]]:  # fmt: skip
    """(every site check passed, the lines saying what each compared)."""
    from image.release.rollout_sites import Sources, parse, run_checks

    checks = [parse(spec) for spec in specs]
    src = Sources(repo, version, targets, release_key, baseline, db_url)
    results = run_checks(checks, rollout_sites, src, max_drop)
    return all(r.passed for r in results), [line for r in results for line in r.lines]


@click.group()
def rollout() -> None:
    """Stage a release: only devices whose bucket is below the stage's % take it."""


def _apply(
    repo: Path, keys: Path | None, online_keys: Path | None, version: str, action: str,
    days: int, stages: list[int] | None = None, sites: list[str] | None = None,
) -> None:  # fmt: skip
    from appliance.ota.rollout import percent
    from image.release.publish import default_keys_dir
    from image.release.rollout import Expiries, change

    new = change(repo, keys or default_keys_dir(repo), online_keys, version, action,
                 Expiries(days, days, 1), stages, sites)  # fmt: skip
    click.echo(f"{version}: rollout {new['state']}, stage {new['stage'] + 1} of "
               f"{','.join(map(str, new['stages']))}: {percent(new)} % of devices")  # fmt: skip


@rollout.command()
@click.argument("version")
@REPO
@click.option("--stages", required=True, help="Percentages, e.g. 1,10,50,100.")
@click.option("--sites", help="Only these sites, e.g. plant-a,plant-b (default: all).")
@site_options
@click.option("--db", "db_url", help="Fleet store: which release each --site-check site runs.")
@FORCE
@KEYS
@ONLINE
@DAYS
def start(
    version: str, repo_dir: Path, stages: str, sites: str | None, site_checks: tuple[str, ...],
    release_key: Path | None, baseline: str | None, max_accuracy_drop: float,
    db_url: str | None, force: bool, keys: Path | None, online_keys: Path | None,
    expires_days: int,
) -> None:  # fmt: skip
    """Start VERSION's rollout at its first stage (after its --site-check acceptances)."""
    from image.release.rollout import parse_stages
    from image.release.rollout_gate import refuse_unless, release_targets

    site_list = [s.strip() for s in sites.split(",") if s.strip()] if sites else []
    parsed = parse_stages(stages)
    if site_checks:
        _, targets = release_targets(repo_dir, version)
        passed, lines = _site_lines(repo_dir, version, site_checks, site_list, targets,
                                    release_key, baseline, db_url, max_accuracy_drop)  # fmt: skip
        refuse_unless(passed, lines, force=force, what="start")
        for line in lines:
            click.echo(line)
        if not passed:
            click.echo(f"{version}: a site check refused; starting anyway (--force)")
    _apply(repo_dir, keys, online_keys, version, "start", expires_days, parsed, site_list)


def _simple(action: str, doc: str) -> None:
    @rollout.command(name=action, help=doc)
    @click.argument("version")
    @REPO
    @KEYS
    @ONLINE
    @DAYS
    def command(
        version: str, repo_dir: Path, keys: Path | None, online_keys: Path | None,
        expires_days: int,
    ) -> None:  # fmt: skip
        _apply(repo_dir, keys, online_keys, version, action, expires_days)


@rollout.command()
@click.argument("version")
@REPO
@click.option(
    "--db", "db_url",
    help="Fleet store (kiln fleet: a SQLite path or postgresql://...): advance only when the "
    "current stage's devices committed, the rollback rate is within the limit and no drift or "
    "anomaly shows.",
)  # fmt: skip
@click.option(
    "--max-rollback-rate", type=click.FloatRange(0, 1), default=0.05, show_default=True,
    help="With --db: refuse above this share of rollbacks.",
)  # fmt: skip
@click.option(
    "--halt-rollback-rate", type=click.FloatRange(0, 1), default=0.2, show_default=True,
    help="With --db: above this, pause or abort instead.",
)  # fmt: skip
@site_options
@FORCE
@KEYS
@ONLINE
@DAYS
def advance(
    version: str, repo_dir: Path, db_url: str | None, max_rollback_rate: float,
    halt_rollback_rate: float, site_checks: tuple[str, ...], release_key: Path | None,
    baseline: str | None, max_accuracy_drop: float, force: bool, keys: Path | None,
    online_keys: Path | None, expires_days: int,
) -> None:  # fmt: skip
    """Move VERSION to its next stage (with --db: only if the fleet gate passes; with
    --site-check: only if each site's model comparison passes)."""
    from image.release.rollout_gate import GateLimits, current_rollout, judge, refuse_unless

    passed, lines = True, []
    if db_url is not None:
        judgement = judge(repo_dir, version, db_url,
                          GateLimits(max_rollback_rate, halt_rollback_rate))  # fmt: skip
        passed, lines = judgement.advance, judgement.lines()
    if site_checks:
        rollout, targets = current_rollout(repo_dir, version)
        sites_ok, more = _site_lines(repo_dir, version, site_checks, rollout.get("sites") or [],
                                     targets, release_key, baseline, db_url,
                                     max_accuracy_drop)  # fmt: skip
        passed, lines = passed and sites_ok, lines + more
    refuse_unless(passed, lines, force=force)
    for line in lines:
        click.echo(line)
    if not passed:
        click.echo(f"{version}: the fleet gate or a site check refused; advancing anyway (--force)")
    _apply(repo_dir, keys, online_keys, version, "advance", expires_days)


_simple("pause", "Stop new installs of VERSION (0 %) until resume.")
_simple("resume", "Return a paused VERSION to its stage.")
_simple("abort", "Stop VERSION for good: nobody new takes it, nobody is downgraded.")


@rollout.command()
@REPO
@click.option(
    "--db", "db_url",
    help="Fleet store (kiln fleet: a SQLite path or postgresql://...): judge each active "
    "rollout's stage and pause it past --halt-rollback-rate (needs the targets key).",
)  # fmt: skip
@click.option(
    "--halt-rollback-rate", type=click.FloatRange(0, 1), default=0.2, show_default=True,
    help="With --db: pause a rollout whose stage rolls back more than this share.",
)  # fmt: skip
@click.option(
    "--halt/--no-halt", default=True, show_default=True,
    help="With --db: pause what is past the halt rate (--no-halt: only report it, exit 3).",
)  # fmt: skip
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print only halts and errors (cron mails only when something happened).",
)
@KEYS
@ONLINE
@DAYS
def status(
    repo_dir: Path, db_url: str | None, halt_rollback_rate: float, halt: bool, quiet: bool,
    keys: Path | None, online_keys: Path | None, expires_days: int,
) -> None:  # fmt: skip
    """What the channel knows; with --db, pause every rollout past the halt rate (cron)."""
    from image.release.rollout import status as lines

    if not quiet:
        for line in lines(repo_dir):
            click.echo(line)
    if db_url is None:
        return
    from image.release.publish import default_keys_dir
    from image.release.rollout import Expiries
    from image.release.rollout_gate import GateLimits
    from image.release.rollout_halt import check_and_halt

    judgements, halts = check_and_halt(
        repo_dir, db_url, GateLimits(halt_rate=halt_rollback_rate),
        keys=keys or default_keys_dir(repo_dir), online_keys=online_keys,
        expiries=Expiries(expires_days, expires_days, 1), halt=halt,
    )  # fmt: skip
    if not quiet:
        for j in judgements:
            if not j.halt:
                click.echo(
                    f"{j.version}: {j.rolled_back} of {len(j.devices)} devices of the "
                    f"{j.stage_percent} % stage rolled back: within the halt limit "
                    f"{halt_rollback_rate:.1%}"
                )
    for h in halts:
        for line in h.lines():
            click.echo(line)
