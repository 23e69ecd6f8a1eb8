"""Staged rollouts: buckets, kiln rollout on a real channel, two file-backed devices."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from appliance.ota.rollout import admit, bucket, percent
from image.release.publish import PublishError, publish
from image.release.rollout import Expiries, RolloutError, change, parse_stages, refresh, status
from tests.bundle.test_cli import run as run_cli
from tests.ota.agent_kit import make_device, publish_to, release
from tests.ota.channelserver import Server


def test_bucket_is_stable_and_independent_across_releases() -> None:
    assert bucket("device-1", "2.0.0") == bucket("device-1", "2.0.0")
    # pinned: a device must land in the same bucket on every runtime version
    assert bucket("device-1", "2.0.0") == 83
    same = sum(bucket(f"d{i}", "2.0.0") == bucket(f"d{i}", "3.0.0") for i in range(2000))
    assert same < 60  # ~1 % expected when releases are independent


def test_buckets_are_spread_evenly() -> None:
    counts = collections.Counter(bucket(f"device-{i}", "2.0.0") // 10 for i in range(20_000))
    assert set(counts) == set(range(10))
    assert all(1700 < n < 2300 for n in counts.values()), counts  # 2000 +- 15 %
    first = sum(bucket(f"device-{i}", "2.0.0") < 1 for i in range(20_000))
    assert 120 < first < 280  # a 1 % stage takes about 1 % of the fleet


def test_admission_follows_state_stage_and_sites() -> None:
    r = {"state": "active", "stages": [0, 100], "stage": 1, "sites": ["a"]}
    assert admit(r, "x", "a", "1").allowed
    assert not admit(r, "x", "b", "1").allowed
    assert not admit(r, "x", None, "1").allowed
    for state in ("paused", "aborted", "held"):
        assert percent({**r, "state": state}) == 0
    assert percent(None) == 100 and percent({**r, "stage": 5}) == 0
    half = {"state": "active", "stages": [50, 100], "stage": 0, "sites": []}
    assert not admit(half, "unknown", None, "1").allowed  # no id on data: not bucketed
    assert admit({**half, "stage": 1}, "unknown", None, "1").allowed


def test_stage_lists_are_checked() -> None:
    assert parse_stages("1,10,50,100") == [1, 10, 50, 100]
    for bad in ("", "10,5", "1,1", "0,101", "a"):
        with pytest.raises(RolloutError, match="--stages"):
            parse_stages(bad)


def _ids_split(version: str) -> tuple[str, str]:
    """One device id below 50 and one at or above it for ``version``."""
    low = next(f"dev-{i}" for i in range(100) if bucket(f"dev-{i}", version) < 50)
    high = next(f"dev-{i}" for i in range(100) if bucket(f"dev-{i}", version) >= 50)
    return low, high


def test_rollout_0_50_100_and_abort_on_two_devices(tmp_path: Path, www: Server) -> None:
    low_id, high_id = _ids_split("2.0.0")
    low = make_device(tmp_path, www, name="low", device_id=low_id)
    high = make_device(tmp_path, www, name="high", device_id=high_id)
    high.dev.key, high.dev.keyring = low.dev.key, low.dev.keyring
    repo = www.root / "repo"
    keys = next((tmp_path / "offline" / "tuf-keys").glob("repo-*"))
    publish(release(low.dev, tmp_path, 2, "2.0.0"), repo, hold=True, create_keys=True)
    assert low.run() == high.run() == "update.not-in-rollout"
    change(repo, keys, None, "2.0.0", "start", Expiries(), [0, 50, 100])
    assert low.run() == high.run() == "update.not-in-rollout"  # 0 %
    assert not (low.data / "updates").exists() or low.downloads() == 0
    change(repo, keys, None, "2.0.0", "advance", Expiries())  # 50 %
    assert low.run() == "update.rebooting"
    assert high.run() == "update.not-in-rollout"
    assert high.events()[-1]["percent"] == 50
    change(repo, keys, None, "2.0.0", "abort", Expiries())
    low.boot()
    low.commit()
    assert low.run() == "update.up-to-date"  # committed devices stay on 2.0.0
    assert high.run() == "update.not-in-rollout"  # nobody new takes it
    with pytest.raises(RolloutError, match="only an active rollout advances"):
        change(repo, keys, None, "2.0.0", "advance", Expiries())
    change(repo, keys, None, "2.0.0", "start", Expiries(), [100])
    assert high.run() == "update.rebooting"  # 100 %


def test_rollout_sites_and_pause(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www, site="plant-b")
    repo = www.root / "repo"
    keys = next((tmp_path / "offline" / "tuf-keys").glob("repo-*"))
    publish_to(www, release(d.dev, tmp_path, 2, "2.0.0"))
    change(repo, keys, None, "2.0.0", "start", Expiries(), [100], ["plant-a"])
    assert d.run() == "update.not-in-rollout"
    assert "site plant-b" in d.events()[-1]["detail"]
    change(repo, keys, None, "2.0.0", "start", Expiries(), [100], ["plant-a", "plant-b"])
    change(repo, keys, None, "2.0.0", "pause", Expiries())
    assert d.run() == "update.not-in-rollout"
    change(repo, keys, None, "2.0.0", "resume", Expiries())
    assert d.run() == "update.rebooting"


def test_refresh_needs_only_the_online_keys(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www)
    repo = www.root / "repo2"  # a channel made with the online pair apart from the start
    online = tmp_path / "online"
    offline = tmp_path / "offline2"
    publish(
        release(d.dev, tmp_path, 1, "1.0.0"), repo, offline, online_keys=online, create_keys=True
    )
    publish(
        release(d.dev, tmp_path, 2, "2.0.0"), repo, offline, online_keys=online, create_keys=True
    )
    d.channel, d.tuf_root = f"{www.url}/repo2", repo / "metadata" / "1.root.json"
    assert sorted(p.name for p in online.iterdir()) == ["snapshot.pem", "timestamp.pem"]
    ts = json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]
    # the offline folder is gone (air-gapped); the online host re-signs on its own
    for pem in offline.glob("*.pem"):
        pem.rename(tmp_path / pem.name)
    until = refresh(repo, offline, online, Expiries(timestamp=3))
    new = json.loads((repo / "metadata" / "timestamp.json").read_text())["signed"]
    assert new["version"] == ts["version"] + 1 and new["expires"] > ts["expires"]
    assert (until.timestamp() - __import__("time").time()) > 2.9 * 86400
    assert d.run() == "update.rebooting"  # devices accept the refreshed metadata
    with pytest.raises(Exception, match="targets key"):
        change(repo, offline, online, "2.0.0", "start", Expiries(), [100])
    lines = status(repo)
    assert any(line.startswith("timestamp") and "in 3" in line for line in lines)
    assert any("release 2.0.0: every device" in line for line in lines)


def test_cli_rollout_and_publish_status(tmp_path: Path, www: Server, keys_home: Path) -> None:
    d = make_device(tmp_path, www)
    repo = www.root / "repo"
    bundle = release(d.dev, tmp_path, 2, "2.0.0")
    done = run_cli("kiln", "publish", "--create-keys", "--hold", str(bundle), str(repo))
    assert done.returncode == 0, done.stderr
    assert "held" in done.stdout
    done = run_cli("kiln", "rollout", "start", "2.0.0", str(repo), "--stages", "1,10,50,100")
    assert done.returncode == 0, done.stderr
    assert "1 % of devices" in done.stdout
    done = run_cli("kiln", "rollout", "advance", "2.0.0", str(repo))
    assert "10 % of devices" in done.stdout, done.stderr
    done = run_cli("kiln", "publish", "--status", str(repo))
    assert done.returncode == 0, done.stderr
    assert (
        "release 2.0.0: rollout active at 10 % (stage 2 of 1,10,50,100; all sites)" in done.stdout
    )
    done = run_cli("kiln", "publish", "--refresh", "--timestamp-days", "2", str(repo))
    assert done.returncode == 0 and "refreshed" in done.stdout, done.stderr
    done = run_cli("kiln", "rollout", "resume", "2.0.0", str(repo))
    assert done.returncode != 0 and "only a paused rollout resumes" in done.stderr


def test_offline_keys_can_be_passphrase_encrypted(
    tmp_path: Path, www: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = make_device(tmp_path, www)
    repo = www.root / "repo3"
    offline, online = tmp_path / "offline3", tmp_path / "online3"
    monkeypatch.setenv("EDGEKILN_TUF_PASSPHRASE", "correct horse battery")
    publish(
        release(d.dev, tmp_path, 2, "2.0.0"), repo, offline, online_keys=online, create_keys=True
    )
    for role in ("root", "targets"):
        assert (offline / f"{role}.pem").read_bytes().startswith(b"-----BEGIN ENCRYPTED")
    for role in ("snapshot", "timestamp"):  # online: cron signs them unattended
        assert b"ENCRYPTED" not in (online / f"{role}.pem").read_bytes()
    monkeypatch.delenv("EDGEKILN_TUF_PASSPHRASE")
    refresh(repo, offline, online, Expiries())  # needs no passphrase
    with pytest.raises(PublishError, match="is encrypted: set EDGEKILN_TUF_PASSPHRASE"):
        change(repo, offline, online, "2.0.0", "start", Expiries(), [100])
    monkeypatch.setenv("EDGEKILN_TUF_PASSPHRASE", "wrong passphrase")
    with pytest.raises(PublishError, match="wrong passphrase"):
        change(repo, offline, online, "2.0.0", "start", Expiries(), [100])
    monkeypatch.setenv("EDGEKILN_TUF_PASSPHRASE", "correct horse battery")
    change(repo, offline, online, "2.0.0", "start", Expiries(), [100])
    d.channel, d.tuf_root = f"{www.url}/repo3", repo / "metadata" / "1.root.json"
    assert d.run() == "update.rebooting"
