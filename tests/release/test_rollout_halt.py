"""kiln rollout status --db: pause a rollout past the halt rate (real channel, real fleet store).

The channel is made with ``kiln publish`` (offline keys passphrase-encrypted), the fleet store
holds the devices' own telemetry windows and the agent's update outcomes as the ingester
stores them, and two real update agents (file-backed devices) read the paused rollout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from appliance.ota.rollout import admit, bucket
from image.fleet.store import Store
from tests.bundle.test_cli import run as run_cli
from tests.fleet.postgres import postgres_cluster
from tests.fleet.simulate import device_windows
from tests.ota.agent_kit import make_device, release
from tests.ota.channelserver import Server

DEVICES = 24
PASSPHRASE = {"EDGEKILN_TUF_PASSPHRASE": "correct horse battery"}


def _event(device: str, kind: str, ts: float) -> dict[str, object]:
    """An update outcome as the ingester stores it (the agent's kind names)."""
    return {"type": "event", "id": f"{device}:{kind}:{ts}", "device": device, "site": "site-0",
            "target": "generic-x86-64", "kind": kind, "detail": "2.0.0", "version": "2.0.0",
            "alert": True, "ts": ts}  # fmt: skip


def _stage(pct: int) -> list[str]:
    return [f"dev-{i:03d}" for i in range(DEVICES) if bucket(f"dev-{i:03d}", "2.0.0") < pct]


def _fleet(db: str, tmp: Path) -> Store:
    store = Store.open(db)
    for i in range(DEVICES):  # the devices' own telemetry windows, as ingested
        store.insert_many(device_windows(i, tmp / "sim", windows=1))
    return store


def _rollout(repo: Path) -> dict[str, object]:
    meta = repo / "metadata"
    snap = json.loads((meta / "timestamp.json").read_text())["signed"]["meta"]["snapshot.json"]
    snapshot = json.loads((meta / f"{snap['version']}.snapshot.json").read_text())
    version = snapshot["signed"]["meta"]["targets.json"]["version"]
    targets = json.loads((meta / f"{version}.targets.json").read_text())["signed"]["targets"]
    found = [t["custom"]["edgekiln"] for t in targets.values()]
    return next(e["rollout"] for e in found if e["version"] == "2.0.0")


def test_status_halts_past_the_rate_and_a_paused_rollout_admits_nobody_new(
    tmp_path: Path, www: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    stage = _stage(60)
    assert len(stage) >= 6, stage
    # two real devices in the 60 % stage: one takes 2.0.0 before the halt, one after; the
    # first publish creates the channel's keys, the offline pair encrypted
    monkeypatch.setenv(*next(iter(PASSPHRASE.items())))
    early = make_device(tmp_path, www, name="early", device_id=stage[0])
    monkeypatch.delenv("EDGEKILN_TUF_PASSPHRASE")
    assert b"ENCRYPTED" in next(Path(tmp_path / "offline").rglob("targets.pem")).read_bytes()
    late = make_device(tmp_path, www, name="late", device_id=stage[1])
    late.dev.key, late.dev.keyring = early.dev.key, early.dev.keyring
    repo = www.root / "repo"
    bundle = release(early.dev, tmp_path, 2, "2.0.0")
    done = run_cli("kiln", "publish", "--hold", str(bundle), str(repo), env=PASSPHRASE)
    assert done.returncode == 0, done.stderr
    done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "60,100",
                   env=PASSPHRASE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert early.run() == "update.rebooting"
    early.boot()
    early.commit()
    assert early.run() == "update.up-to-date"

    db = str(tmp_path / "fleet.db")
    store = _fleet(db, tmp_path)
    now = time.time() + 1
    # 1 rollback in the stage: within 20 %; status says so and changes nothing
    store.insert_many([_event(stage[0], "update.committed", now),
                       _event(stage[2], "update.rolled-back", now)])  # fmt: skip
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db)
    assert done.returncode == 0, done.stderr
    assert f"2.0.0: 1 of {len(stage)} devices of the 60 % stage rolled back: within" in done.stdout
    assert _rollout(repo)["state"] == "active"
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db, "--quiet")
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr

    # more rollbacks: past 20 %; the targets key is encrypted and no passphrase is given
    rolled = stage[2 : 2 + len(stage) // 3]
    store.insert_many([_event(d, "update.rolled-back", now) for d in rolled])
    store.close()
    rate = f"{len(rolled) / len(stage):.1%}"
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db, "--quiet")
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"HALT DUE: rollout NOT paused: rollback rate {rate} over the halt limit 20.0%" in (
        done.stderr
    )
    assert "targets key" in done.stderr and "is encrypted" in done.stderr, done.stderr
    assert "a halt was due for 2.0.0" in done.stderr
    assert _rollout(repo)["state"] == "active"  # nothing was written
    # the targets key is not there at all: named, and the halt is said to be due
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db, "--keys",
                   str(tmp_path / "no-keys"), env=PASSPHRASE)  # fmt: skip
    assert done.returncode == 3
    assert f"the targets key {tmp_path / 'no-keys' / 'targets.pem'} is not there" in done.stderr
    assert "a halt was due for 2.0.0" in done.stderr
    # --no-halt: a read-only look reports it and exits 3 too
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db, "--no-halt")
    assert done.returncode == 3 and "--no-halt was given" in done.stderr

    # with the passphrase (cron's environment): paused, and it says what and why
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db, "--quiet", env=PASSPHRASE)
    assert done.returncode == 0, done.stderr
    assert f"2.0.0: HALTED: rollout paused: rollback rate {rate} over the halt limit 20.0% " in (
        done.stdout
    )
    assert (
        f"({len(rolled)} of {len(stage)} devices of the 60 % stage rolled back, 1 committed)"
        in (done.stdout)
    )
    assert f"  rolled back: {', '.join(sorted(rolled))}\n" in done.stdout
    rollout = _rollout(repo)
    assert rollout["state"] == "paused" and rollout["stage"] == 0
    assert "rollout paused at 0 %" in run_cli("kiln", "rollout", "status", str(repo)).stdout
    # the device side: 0 % admitted; the committed device stays, nobody new takes it
    assert not admit(rollout, stage[1], None, "2.0.0").allowed
    assert early.run() == "update.up-to-date" and early.version == "2.0.0"
    assert late.run() == "update.not-in-rollout"
    assert "(paused)" in late.events()[-1]["detail"]
    # the next cron run: nothing active, nothing to do
    done = run_cli("kiln", "rollout", "status", str(repo), "--db", db, "--quiet")
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


@pytest.mark.integration
def test_status_halts_from_a_postgresql_fleet_store(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www)
    repo = www.root / "repo"
    bundle = release(d.dev, tmp_path, 2, "2.0.0")
    assert run_cli("kiln", "publish", "--hold", str(bundle), str(repo)).returncode == 0
    assert (
        run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "60,100").returncode
        == 0
    )
    stage = _stage(60)
    with postgres_cluster() as url:
        store = _fleet(url, tmp_path)
        now = time.time() + 1
        kinds = ["update.rolled-back"] * 4 + ["update.committed"] * (len(stage) - 4)
        store.insert_many([_event(dev, kind, now) for dev, kind in zip(stage, kinds, strict=True)])
        store.close()
        done = run_cli("kiln", "rollout", "status", str(repo), "--db", url)
    assert done.returncode == 0, done.stderr
    assert f"2.0.0: HALTED: rollout paused: rollback rate {4 / len(stage):.1%}" in done.stdout
    assert _rollout(repo)["state"] == "paused"
