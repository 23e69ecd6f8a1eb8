"""kiln rollout start|advance --site-check: each site's own images decide (real model packages).

Two releases on a real channel (``kiln publish``): each full bundle carries an ext4 slot image
with ``/opt/edgekiln/models/{primary,fallback}`` as a build lays them out. 1.0.0's primary is
the reference primary; 2.0.0's primary is a different network (the reference fallback's).
plant-a's images are the reference split: 2.0.0 is within 1 pp there. plant-b's camera is
noisy (Gaussian noise, sigma 12): 2.0.0's primary falls further behind there, and the site
check refuses. The comparison is the real ``kiln model compare`` code; the expected figures
come from running it on the reference packages directly.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.ota.rollout import bucket
from image.fleet.store import Store
from image.model.compare import Comparison, compare_packages
from image.release.keys import public_pem
from image.release.publish import publish
from tests.bundle.test_cli import run as run_cli
from tests.fleet.simulate import device_windows
from tests.inference.fixtures import rewrite_manifest
from tools.powercut import Device

pytestmark = pytest.mark.integration

MODELS = Path(__file__).resolve().parents[2] / "recipes" / "models"
DEVICES = [f"cam-{site}-{i}" for site in ("a", "b") for i in range(6)]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Site data, the packages each release carries, and their ext4 slot images."""
    root = tmp_path_factory.mktemp("sites")
    with np.load(MODELS / "inspect-primary" / "reference.npz") as ref:
        images, labels = ref["images"], ref["labels"]
    np.savez(root / "plant-a.npz", images=images, labels=labels)
    noise = np.random.default_rng(0).normal(0, 12, images.shape)
    noisy = np.clip(images.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    np.savez(root / "plant-b.npz", images=noisy, labels=labels)
    new_primary = root / "new-primary"  # 2.0.0's primary: another trained network
    shutil.copytree(MODELS / "inspect-fallback", new_primary)
    rewrite_manifest(new_primary, name="inspect-primary", version="2.0.0")
    kit = {"plant-a": root / "plant-a.npz", "plant-b": root / "plant-b.npz",
           "new-primary": new_primary}  # fmt: skip
    for version, primary in (("1.0.0", MODELS / "inspect-primary"), ("2.0.0", new_primary)):
        tree = root / f"tree-{version}"
        shutil.copytree(primary, tree / "opt/edgekiln/models/primary")
        shutil.copytree(MODELS / "inspect-fallback", tree / "opt/edgekiln/models/fallback")
        img = root / f"rootfs-{version}.img"
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", str(tree),
                        str(img), "24M"], check=True, capture_output=True)  # fmt: skip
        kit[version] = img
    return kit


@pytest.fixture
def channel(tmp_path: Path, kit: dict[str, Path], keys_home: Path) -> tuple[Path, Path]:
    """(a channel with 1.0.0 current and 2.0.0 held, the release key's .pub)."""
    dev = Device(tmp_path / "dev")
    dev.reset()
    repo = tmp_path / "www" / "repo"
    repo.mkdir(parents=True)
    for version in ("1.0.0", "2.0.0"):
        bundle = tmp_path / f"{version}.bundle"
        bundle.write_bytes(dev._bundle(kit[version].read_bytes(), version))
        publish(bundle, repo, create_keys=True, hold=version == "2.0.0")
    pub = tmp_path / "release.pub"
    pub.write_bytes(public_pem(dev.key.public_key()))
    return repo, pub


def _drop(c: Comparison) -> float:
    return c.old.top1 - c.new.top1


def _figures(c: Comparison, limit: float = 0.01) -> str:
    passed = _drop(c) <= limit
    return (f"top-1 {c.old.top1:.4f} -> {c.new.top1:.4f}, drop {_drop(c) * 100:.2f} pp, "
            f"limit {limit * 100:.2f} pp: {'pass' if passed else 'FAIL'}")  # fmt: skip


def _fleet(db: Path, tmp: Path) -> None:
    """The sites' devices on 1.0.0 (their own windows), and 2.0.0's stage committed."""
    store = Store.open(str(db))
    template = device_windows(0, tmp / "sim", windows=1)[0]
    store.insert_many([
        {**template, "id": f"{d}:w", "device": d, "site": f"plant-{d[4]}", "version": "1.0.0"}
        for d in DEVICES
    ])  # fmt: skip
    now = time.time() + 1
    store.insert_many([
        {"type": "event", "id": f"{d}:c", "device": d, "site": f"plant-{d[4]}",
         "target": "generic-x86-64", "kind": "update.committed", "alert": True, "ts": now}
        for d in DEVICES if bucket(d, "2.0.0") < 50
    ])  # fmt: skip
    store.close()


def test_site_checks_compare_the_releases_models_on_each_sites_images(
    tmp_path: Path, kit: dict[str, Path], channel: tuple[Path, Path]
) -> None:
    repo, pub = channel
    primary_a = compare_packages(MODELS / "inspect-primary", kit["new-primary"],
                                 data=kit["plant-a"], timing_rounds=1)  # fmt: skip
    primary_b = compare_packages(MODELS / "inspect-primary", kit["new-primary"],
                                 data=kit["plant-b"], timing_rounds=1)  # fmt: skip
    # The limit lies halfway between the two sites' drops (computed here, so a CPU on which
    # an image or two flips does not move plant-a across a fixed 1 pp line).
    assert _drop(primary_a) < _drop(primary_b) - 0.05  # the premise of the sites below
    limit = round((_drop(primary_a) + _drop(primary_b)) / 2, 4)
    figures_a, figures_b = _figures(primary_a, limit), _figures(primary_b, limit)
    assert figures_a.endswith("pass") and figures_b.endswith("FAIL")

    # start: plant-a's acceptance passes for both roles; plant-c is not in the rollout
    done = run_cli(
        "kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "50,100",
        "--sites", "plant-a,plant-b", "--site-check", f"plant-a={kit['plant-a']}",
        "--site-check", f"plant-c={kit['plant-b']}", "--release-key", str(pub),
        "--baseline", "1.0.0", "--max-accuracy-drop", str(limit),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "site plant-a: primary, release 1.0.0 -> 2.0.0 (model inspect-primary 1.0.0 -> "
        f"inspect-primary 2.0.0) on plant-a.npz (256 images, onnxruntime): {figures_a}"
    ) in done.stdout
    assert "site plant-a: fallback, release 1.0.0 -> 2.0.0" in done.stdout
    assert f"drop 0.00 pp, limit {limit * 100:.2f} pp: pass" in done.stdout  # the same fallback
    assert "site plant-c: not in the rollout's sites (plant-a, plant-b): check skipped" in (
        done.stdout
    )
    assert "2.0.0: rollout active, stage 1 of 50,100: 50 % of devices" in done.stdout

    # advance: the fleet gate passes, plant-b's acceptance does not (its baseline: the
    # release its devices report in the fleet store)
    db = tmp_path / "fleet.db"
    _fleet(db, tmp_path)
    args = ["kiln", "rollout", "advance", "2.0.0", str(repo), "--db", str(db), "--site-check",
            f"plant-a={kit['plant-a']}", "--site-check", f"plant-b={kit['plant-b']}",
            "--release-key", str(pub), "--max-accuracy-drop", str(limit)]  # fmt: skip
    done = run_cli(*args)
    assert done.returncode != 0
    assert "devices in the stage" in done.stderr and "have not committed" not in done.stderr
    assert f"on plant-a.npz (256 images, onnxruntime): {figures_a}" in done.stderr
    assert (
        "site plant-b: primary, release 1.0.0 -> 2.0.0 (model inspect-primary 1.0.0 -> "
        f"inspect-primary 2.0.0) on plant-b.npz (256 images, onnxruntime): {figures_b}"
    ) in done.stderr, done.stderr
    assert "refused to advance: fix the above, or pass --force to override" in done.stderr
    assert "at 50 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout
    done = run_cli(*args, "--force")
    assert done.returncode == 0, done.stderr
    assert figures_b in done.stdout
    assert "a site check refused; advancing anyway (--force)" in done.stdout
    assert "at 100 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout


def test_site_checks_with_named_packages_and_clear_errors(
    tmp_path: Path, kit: dict[str, Path], channel: tuple[Path, Path]
) -> None:
    repo, pub = channel
    done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "10,100")
    assert done.returncode == 0, done.stderr
    old, new = MODELS / "inspect-primary", kit["new-primary"]
    named = f"plant-b={kit['plant-b']}:{old}:{new}"
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--site-check", named)
    assert done.returncode != 0
    assert "site plant-b: inspect-primary -> new-primary (model inspect-primary 1.0.0 -> " in (
        done.stderr
    )
    assert "limit 1.00 pp: FAIL" in done.stderr
    # a looser limit lets it through
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--site-check", named,
                   "--max-accuracy-drop", "0.2")  # fmt: skip
    assert done.returncode == 0 and "limit 20.00 pp: pass" in done.stdout, done.stderr
    # what each form needs, said plainly
    checks = {
        "plant-b": "expected SITE=DATA.npz or SITE=DATA.npz:OLD_PKG:NEW_PKG",
        f"plant-b={kit['plant-b']}:{old}": "expected SITE=DATA.npz or",
        f"plant-b={tmp_path / 'none.npz'}": "none.npz does not exist",
        f"plant-b={kit['plant-b']}": "give --release-key",
    }
    for spec, message in checks.items():
        done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "100",
                       "--site-check", spec)  # fmt: skip
        assert done.returncode != 0 and message in done.stderr, (spec, done.stderr)
    keyed = ["--site-check", f"plant-b={kit['plant-b']}", "--release-key", str(pub)]
    done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "100", *keyed)
    assert done.returncode != 0 and "give --db (the fleet store) or --baseline" in done.stderr
    done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "100", *keyed,
                   "--baseline", "0.9.0")  # fmt: skip
    assert done.returncode != 0 and "keeps no full bundle of 0.9.0" in done.stderr
