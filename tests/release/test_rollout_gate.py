"""kiln rollout advance --db: the fleet gate (a real SQLite fleet store, real device windows)."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.ota.rollout import bucket
from image.fleet.store import Store
from image.release.publish import publish
from tests.bundle.test_cli import run as run_cli
from tests.fleet.simulate import device_windows
from tests.ota.agent_kit import make_device, release
from tests.ota.channelserver import Server

DEVICES = 24


def _event(device: str, site: str, kind: str, ts: float) -> dict[str, object]:
    """An update outcome as the ingester stores it (kind names of image/fleet/gates.py)."""
    return {"type": "event", "id": f"{device}:{kind}:{ts}", "device": device, "site": site,
            "target": "generic-x86-64", "kind": kind, "reason": "health gate",
            "alert": kind == "update_rolled_back", "ts": ts}  # fmt: skip


def _stage(stage_pct: int) -> list[str]:
    return [f"dev-{i:03d}" for i in range(DEVICES) if bucket(f"dev-{i:03d}", "2.0.0") < stage_pct]


def test_advance_follows_the_fleet_gate(tmp_path: Path, www: Server) -> None:
    db = tmp_path / "fleet.db"
    store = Store.open(str(db))
    for i in range(DEVICES):  # the devices' own telemetry windows, as ingested
        store.insert_many(device_windows(i, tmp_path / "sim", windows=2))
    d = make_device(tmp_path, www)
    repo = www.root / "repo"
    publish(release(d.dev, tmp_path, 2, "2.0.0"), repo, hold=True)
    done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "30,60,100")
    assert done.returncode == 0, done.stderr
    first = _stage(30)
    assert 3 <= len(first) < DEVICES, first  # the same buckets the devices compute

    # nobody has committed yet: refused, and the rollout stays where it is
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--db", str(db))
    assert done.returncode != 0
    assert f"{len(first)} of {len(first)} devices have not committed" in done.stderr
    assert "--force" in done.stderr
    assert "at 30 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout

    now = time.time() + 1
    store.insert_many([_event(dev, "site-0", "update_committed", now) for dev in first])
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert f"{len(first)} devices in the stage, {len(first)} committed" in done.stdout
    assert "at 60 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout

    # the next stage: one of its devices rolled back (over 5 %): refused, unless --force
    second = _stage(60)
    time.sleep(1.1)  # events of this stage come after it started (whole seconds)
    now = time.time() + 1
    store.insert_many(
        [_event(dev, "site-0", "update_committed", now) for dev in second[1:]]
        + [_event(second[0], "site-0", "update_rolled_back", now)]
    )
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--db", str(db))
    assert done.returncode != 0
    assert f"rollback rate {1 / len(second):.1%} exceeds 5.0%" in done.stderr, done.stderr
    assert "at 60 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--db", str(db), "--force")
    assert done.returncode == 0, done.stderr
    assert "advancing anyway (--force)" in done.stdout
    assert "at 100 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout
    store.close()


def test_a_rollback_rate_over_the_halt_limit_says_pause(tmp_path: Path, www: Server) -> None:
    db = tmp_path / "fleet.db"
    store = Store.open(str(db))
    for i in range(DEVICES):
        store.insert_many(device_windows(i, tmp_path / "sim", windows=1))
    d = make_device(tmp_path, www)
    repo = www.root / "repo"
    publish(release(d.dev, tmp_path, 2, "2.0.0"), repo)
    assert (
        run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "60,100").returncode
        == 0
    )
    stage = _stage(60)
    now = time.time() + 1
    half = len(stage) // 2
    store.insert_many(
        [_event(dev, "site-0", "update_rolled_back", now) for dev in stage[:half]]
        + [_event(dev, "site-0", "update_committed", now) for dev in stage[half:]]
    )
    store.close()
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo), "--db", str(db),
                   "--max-rollback-rate", "0.9")  # fmt: skip
    assert done.returncode != 0
    assert "pause or abort the rollout" in done.stderr, done.stderr
