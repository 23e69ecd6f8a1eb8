"""``appliance update run`` against a real TUF channel (kiln publish) on a loopback server."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from appliance.ota import agent_state
from appliance.ota.agent_state import AgentBusyError
from appliance.slots.state import BootState
from tools.powercut import _image

from .agent_kit import make_device, publish_to, release
from .channelserver import Server


def test_installs_reboots_commits_then_idles_on_timestamp_only(
    tmp_path: Path,
    www: Server,
) -> None:
    d = make_device(tmp_path, www)
    assert d.run() == "update.up-to-date"  # v1 is what it runs
    publish_to(www, release(d.dev, tmp_path, 2, "2.0.0"))
    assert d.run() == "update.rebooting"
    assert d.reboots == ["reboot"]
    assert d.dev.slots["B"].read_bytes()[: len(_image(2))] == _image(2)
    assert d.dev.loader().read() == BootState("A", "B", 1)
    assert d.downloads() == 0  # the bundle is removed once installed
    assert d.boot() == ("B", "2.0.0")
    assert d.run() == "update.on-trial"  # the health gate has not committed yet
    d.commit()
    www.clear()
    assert d.run() == "update.up-to-date"
    names = [e["kind"] for e in d.events()]
    for step in ("update.polled", "update.downloading", "update.downloaded", "update.installing",
                 "update.installed", "update.rebooting", "update.committed"):  # fmt: skip
        assert step in names
    # An idle poll: timestamp.json is the only metadata fetched (plus TUF's probe for a
    # newer root, which the server answers 404).
    ok = [h for h in www.hits if h.status == 200]
    assert [h.path for h in ok] == ["/repo/metadata/timestamp.json"]
    assert {h.path for h in www.hits if h.status != 200} <= {"/repo/metadata/2.root.json"}
    assert www.body_bytes() <= 2048


def test_a_release_that_rolled_back_is_not_tried_again_until_a_newer_one(
    tmp_path: Path,
    www: Server,
) -> None:
    d = make_device(tmp_path, www)
    publish_to(www, release(d.dev, tmp_path, 2, "2.0.0"))
    assert d.run() == "update.rebooting"
    assert d.boot() == ("B", "2.0.0")  # its one try: the health gate fails, no commit
    assert d.boot() == ("A", "1.0.0")  # the loader falls back
    www.clear()
    assert d.run() == "update.skipped-rolled-back"
    assert "update.rolled-back" in [e["kind"] for e in d.events()]
    assert not [h for h in www.hits if "/targets/" in h.path]  # nothing downloaded
    assert d.run() == "update.skipped-rolled-back"
    publish_to(www, release(d.dev, tmp_path, 3, "3.0.0"))
    assert d.run() == "update.rebooting"
    assert d.boot() == ("B", "3.0.0")


def test_two_runs_never_overlap(tmp_path: Path, www: Server) -> None:
    d = make_device(tmp_path, www)
    with agent_state.run_lock(d.data), pytest.raises(AgentBusyError):
        d.run()
    assert d.events()[-1]["kind"] == "update.busy"
    lock = d.data / "edgekiln" / agent_state.LOCK_NAME
    with open(lock) as f:  # released after the run: anyone can take it
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    import random

    rng = random.Random(3)
    for n in range(1, 12):
        cap = min(agent_state.BACKOFF_MAX_S, agent_state.BACKOFF_BASE_S * 2 ** (n - 1))
        delays = {agent_state.backoff_delay(n, rng) for _ in range(20)}
        assert all(cap / 2 <= x <= cap for x in delays) and len(delays) > 1


def test_an_interrupted_download_resumes_and_a_moved_channel_drops_it(
    tmp_path: Path,
    www: Server,
) -> None:
    d = make_device(tmp_path, www)
    v2 = release(d.dev, tmp_path, 2, "2.0.0")
    publish_to(www, v2)
    www.faults["full.bundle"] = ("truncate", 60_000)
    assert d.run() == "update.download-interrupted"
    kept = d.downloads()
    assert 0 < kept < v2.stat().st_size  # verified chunks stay on data
    state = agent_state.load(d.data)
    assert state.failures == 1 and state.pending is not None and state.pending.version == "2.0.0"
    del www.faults["full.bundle"]
    assert d.run() == "update.backoff"  # too early: nothing asked of the server
    www.clear()
    assert d.run(force=True) == "update.rebooting"
    refetched = sum(h.sent for h in www.hits if "/targets/" in h.path)
    # the head is re-read (a new release at the same URL must be noticed), then only the rest
    assert refetched <= v2.stat().st_size - kept + 16 * 1024 + 4096

    # A second device is cut short on v2, then the channel moves on to v3: v2's part goes.
    e = make_device(tmp_path, www, name="dev2", device_id="device-2")
    e.dev.key = d.dev.key
    e.dev.keyring = d.dev.keyring
    www.faults["full.bundle"] = ("truncate", 60_000)
    assert e.run() == "update.download-interrupted"
    old_parts = list((e.data / "updates").glob("*.part"))
    assert old_parts
    del www.faults["full.bundle"]
    publish_to(www, release(d.dev, tmp_path, 3, "3.0.0"))
    assert e.run(force=True) == "update.rebooting"
    assert not any(p.exists() for p in old_parts)
    assert "update.dropped-download" in [ev["kind"] for ev in e.events()]


def test_a_device_on_the_delta_base_downloads_the_delta(tmp_path: Path, www: Server) -> None:
    import io

    from appliance.bundle import PayloadSource, write_bundle

    d = make_device(tmp_path, www)
    v1, v2 = tmp_path / "v1.img", tmp_path / "v2.img"
    v1.write_bytes(_image(1))
    v2.write_bytes(_image(1)[:100_000] + b"new" + _image(1)[100_003:])
    full = tmp_path / "full2.bundle"
    full.write_bytes(d.dev._bundle(v2.read_bytes(), "2.0.0"))
    out = io.BytesIO()
    write_bundle(
        out, key=d.dev.key, product="powercut", targets=["generic-x86-64"], version="2.0.0",
        security_version=1, created=1_750_000_000, payloads=[PayloadSource.delta(v2, v1)],
        chunk_size=16 * 1024,
    )  # fmt: skip
    delta = tmp_path / "delta2.bundle"
    delta.write_bytes(out.getvalue())
    publish_to(www, full)
    publish_to(www, delta)
    www.clear()
    assert d.run() == "update.rebooting"
    started = next(e for e in d.events() if e["kind"] == "update.downloading")
    assert started["bundle"] == "delta" and started["length"] == delta.stat().st_size
    # the delta, plus its first tar header read once more (fetch.py checks it first, alone)
    assert sum(h.sent for h in www.hits if "/targets/" in h.path) <= delta.stat().st_size + 512
    assert d.dev.slots["B"].read_bytes()[: len(v2.read_bytes())] == v2.read_bytes()
