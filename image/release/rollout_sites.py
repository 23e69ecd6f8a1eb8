"""``kiln rollout start|advance --site-check SITE=DATA``: a site's acceptance before its stage.

A site may ask that the release's models are no worse on **its own images** than what it runs
today: ``--site-check plant-b=plant-b.npz`` (an .npz of ``images`` uint8 [N,H,W,3] and
``labels`` [N], as ``kiln model compare --data`` takes) runs the real comparison of
``kiln model compare`` (:func:`image.model.compare.compare_packages`, on onnxruntime) for every
model role (``primary``, ``fallback``) found in both releases:

* NEW: the model packages inside the release being rolled out, read from its full bundle on the
  channel (the bundle's signature checked with ``--release-key``, its slot image's
  ``/opt/edgekiln/models/<role>`` copied out with ``debugfs``): what the devices will run,
  not a copy that may differ from it;
* OLD: the same from the release the site runs now: ``--baseline VERSION``, or with ``--db``
  the version most of the site's devices on the release's targets report.

``SITE=DATA:OLD_PKG:NEW_PKG`` names both packages instead (one pair; no channel, key or store
needed). A check applies when the rollout includes the site (its ``--sites``, or every site):
every stage above 0 % admits a share of each included site's devices. A failed check refuses
the start or advance with the figures (top-1 old and new, drop, limit); ``--force`` overrides.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from image.release.rollout import RolloutError

MODELS_DIR = "/opt/edgekiln/models"  # image/build/rootfs.py MODELS_DIR


class SiteCheckError(RolloutError):
    """A site check that cannot run (bad spec, no bundle, no models, no baseline)."""


@dataclass(frozen=True)
class SiteCheck:
    """One ``--site-check``: the site, its data and optionally both packages."""

    site: str
    data: Path
    old: Path | None = None
    new: Path | None = None


@dataclass
class SiteResult:
    """The comparisons run for one site check, and whether they all passed."""

    check: SiteCheck
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def parse(spec: str) -> SiteCheck:
    """``SITE=DATA`` or ``SITE=DATA:OLD_PKG:NEW_PKG`` (paths without ``:``)."""
    site, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or not site.strip() or len(parts) not in (1, 3) or not all(parts):
        raise SiteCheckError(
            f"--site-check {spec!r}: expected SITE=DATA.npz or SITE=DATA.npz:OLD_PKG:NEW_PKG, "
            "e.g. plant-a=plant-a.npz"
        )
    paths = [Path(p) for p in parts]
    for p in paths:
        if not p.exists():
            raise SiteCheckError(f"--site-check {spec!r}: {p} does not exist")
    if len(paths) == 1:
        return SiteCheck(site.strip(), paths[0])
    return SiteCheck(site.strip(), paths[0], paths[1], paths[2])


def full_bundle(repo: Path, version: str, target: str | None = None) -> tuple[str, Path]:
    """(hardware target, file) of ``version``'s full bundle in the channel's targets history."""
    metas = sorted(
        (int(p.name.split(".")[0]), p) for p in (repo / "metadata").glob("*.targets.json")
    )
    for _, meta in reversed(metas):
        for path, info in sorted(json.loads(meta.read_bytes())["signed"]["targets"].items()):
            parts = path.split("/")
            custom = info.get("custom", {}).get("edgekiln", {})
            if len(parts) != 3 or parts[2] != "full.bundle" or custom.get("version") != version:
                continue
            if target is not None and parts[1] != target:
                continue
            bundle = (
                repo / "targets" / parts[0] / parts[1] / f"{info['hashes']['sha256']}.full.bundle"
            )
            if bundle.is_file():
                return parts[1], bundle
    where = f" for {target}" if target else ""
    raise SiteCheckError(
        f"{repo} keeps no full bundle of {version}{where}: name the packages instead "
        "(--site-check SITE=DATA:OLD_PKG:NEW_PKG)"
    )


def extract_models(
    bundle: Path, release_key: Path, out: Path, stack: contextlib.ExitStack
) -> dict[str, Path]:
    """role -> package directory of the models in ``bundle``'s slot image (signature checked)."""
    from appliance.bundle.delta_base import resolve_base
    from appliance.bundle.errors import BundleError
    from appliance.bundle.keyring import Keyring, TrustedKey
    from image.release.keys import load_keyring_file, load_public_key

    if release_key.suffix == ".json":
        ring = load_keyring_file(release_key)
    else:
        ring = Keyring(1, (TrustedKey.from_public_key(load_public_key(release_key)),))
    try:
        image = resolve_base(bundle, ring, stack)
    except BundleError as exc:
        raise SiteCheckError(f"cannot read {bundle}: {exc} (is --release-key right?)") from None
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["debugfs", "-R", f"rdump {MODELS_DIR} {out}", str(image)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    models = out / Path(MODELS_DIR).name
    # debugfs exits 0 even when its command failed: the folder tells
    roles = (
        {p.name: p for p in sorted(models.iterdir()) if (p / "model.json").is_file()}
        if models.is_dir()
        else {}
    )
    if not roles:
        raise SiteCheckError(
            f"{bundle}: its slot image has no model package under {MODELS_DIR} "
            f"({done.stderr.strip()[-300:] or 'nothing there'})"
        )
    return roles


def site_version(db_url: str, site: str, targets: list[str], version: str) -> str:
    """The version most of ``site``'s devices on ``targets`` run (other than ``version``)."""
    from image.fleet.store import Store

    store = Store.open(db_url)
    try:
        rows = store.query("SELECT site, target, version FROM devices")
    finally:
        store.close()
    counts = Counter(v for s, t, v in rows if s == site and t in targets and v and v != version)
    if not counts:
        raise SiteCheckError(
            f"the fleet store knows no device of site {site} on {', '.join(targets)} running "
            f"a release other than {version}: give --baseline VERSION or "
            f"--site-check {site}=DATA:OLD_PKG:NEW_PKG"
        )
    return str(counts.most_common(1)[0][0])


@dataclass(frozen=True)
class Sources:
    """Where the packages come from when a check names none."""

    repo: Path
    version: str
    targets: list[str]
    release_key: Path | None = None
    baseline: str | None = None
    db_url: str | None = None


class _Models:
    """Each bundle's model packages, extracted once per run (sites often share a baseline)."""

    def __init__(self, key: Path, stack: contextlib.ExitStack) -> None:
        self.key, self.stack = key, stack
        self.done: dict[Path, dict[str, Path]] = {}
        self.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kiln-site-")))

    def __call__(self, bundle: Path) -> dict[str, Path]:
        if bundle not in self.done:
            out = self.work / str(len(self.done))
            self.done[bundle] = extract_models(bundle, self.key, out, self.stack)
        return self.done[bundle]


def _pairs(
    check: SiteCheck, src: Sources, stack: contextlib.ExitStack, memo: dict[str, _Models]
) -> list[tuple[str, Path, Path]]:
    if check.old is not None and check.new is not None:
        return [(f"{check.old.name} -> {check.new.name}", check.old, check.new)]
    if src.release_key is None:
        raise SiteCheckError(
            f"--site-check {check.site}={check.data} reads the models from the releases' bundles: "
            "give --release-key (the release key's .pub, or a keyring .json), or name the "
            "packages (SITE=DATA:OLD_PKG:NEW_PKG)"
        )
    if src.baseline is not None:
        old_version = src.baseline
    elif src.db_url is not None:
        old_version = site_version(src.db_url, check.site, src.targets, src.version)
    else:
        raise SiteCheckError(
            f"--site-check {check.site}: which release does {check.site} run? give --db "
            "(the fleet store) or --baseline VERSION"
        )
    target, new_bundle = full_bundle(src.repo, src.version)
    _, old_bundle = full_bundle(src.repo, old_version, target)
    if "models" not in memo:
        memo["models"] = _Models(src.release_key, stack)
    new, old = memo["models"](new_bundle), memo["models"](old_bundle)
    both = sorted((role for role in new if role in old), key=lambda r: (r != "primary", r))
    if not both:
        raise SiteCheckError(
            f"{src.version} ({', '.join(new)}) and {old_version} ({', '.join(old)}) share no "
            "model role to compare"
        )
    return [
        (f"{role}, release {old_version} -> {src.version}", old[role], new[role]) for role in both
    ]


def run_checks(
    checks: list[SiteCheck], rollout_sites: list[str], src: Sources, max_drop: float
) -> list[SiteResult]:
    """Run every check whose site the rollout includes; the others say they were skipped."""
    from image.model.compare import compare_packages

    results = []
    memo: dict[str, _Models] = {}
    with contextlib.ExitStack() as stack:
        for check in checks:
            result = SiteResult(check)
            results.append(result)
            if rollout_sites and check.site not in rollout_sites:
                result.lines.append(
                    f"site {check.site}: not in the rollout's sites ({', '.join(rollout_sites)}): "
                    "check skipped"
                )
                continue
            for label, old, new in _pairs(check, src, stack, memo):
                c = compare_packages(old, new, data=check.data, max_accuracy_drop=max_drop,
                                     timing_rounds=1)  # fmt: skip
                drop = c.old.top1 - c.new.top1
                line = (
                    f"site {check.site}: {label} (model {c.old.name} {c.old.version} -> "
                    f"{c.new.name} {c.new.version}) on {check.data.name} ({c.images} images, "
                    f"{c.backend}): top-1 "
                    f"{c.old.top1:.4f} -> {c.new.top1:.4f}, drop {drop * 100:.2f} pp, limit "
                    f"{max_drop * 100:.2f} pp: {'pass' if c.passed else 'FAIL'}"
                )
                result.lines.append(line)
                if not c.passed:
                    result.failures.append(line)
    return results
