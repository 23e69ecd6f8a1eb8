"""Hands-off updates in QEMU: a device finds, fetches and installs releases by itself.

No USB stick and no console input: the image's own ``edgekiln-update.timer`` starts
``edgekiln-update.service`` (``appliance update run``) on the device, which polls a TUF channel
the test publishes with the real ``kiln publish`` / ``kiln rollout`` and serves over HTTP
(``tests/ota/channelserver.py``). The update recipes extend the e2e profile (``device.py``)
with an ``[update]`` table: channel ``http://10.0.2.100:8080/repo`` (QEMU user-mode networking
runs ``relay.py`` for each connection there, so the server listens on a free host port),
the channel's TUF root, a poll every 60 s (the first 60 s after boot), a download window,
an 8 MiB/s cap and ``reboot = "window"``. One device goes through the steps in order:

a. v1 boots; v2 is published with a delta from v1 and its rollout started at 0 %: the pass
   says ``update.not-in-rollout`` and fetches no bundle;
b. ``kiln rollout advance`` to 100 %: the next pass takes the delta (base = the active slot),
   installs it into B, reboots inside the window; the health gate commits B;
c. v3 (whose primary model fails its reference check) is published as a full bundle only;
   the power is cut in the middle of its download; after the boot the download resumes at
   the offset the device's journal had verified (read from the powered-off disk);
d. v3 installs into A, fails its health gate, the device returns to B by itself, and the
   next pass skips v3 (``update.skipped-rolled-back``) without fetching it again.

Timeouts are hang protection only. Durations, bytes on the wire and publish-to-committed
times go into the figures (``EDGEKILN_E2E_FIGURES``), never into assertions.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from image.vm.qemu import Vm, VmConfig
from tests.e2e.conftest import Builds, _cache_root
from tests.e2e.device import (
    EVENTS,
    REPO,
    Build,
    build,
    ext4_file,
    parse_results,
    partitions,
    provision,
    read_partition,
    reuse_build,
    run,
    write_recipe,
)
from tests.e2e.test_lifecycle import Device
from tests.ota.channelserver import Server, serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]

BOOT_S = 900.0
INSTALL_S = 1800.0
GUEST_CHANNEL = "10.0.2.100:8080"
CHANNEL_URL = f"http://{GUEST_CHANNEL}/repo"
POLL_S = 60
CAP = 8 << 20  # bandwidth_cap = "8M"
CHUNK = 1 << 20  # the bundles' chunk size (kiln build's default)
#: version -> its primary model fails its reference check
VERSIONS = {"1.0.0": False, "2.0.0": False, "3.0.0": True}
DEV_PASSPHRASE = "edgekiln-development-only"  # image/build/sign.py's development key


@dataclass(frozen=True)
class Channel:
    """The channel's keys and the TUF root every update build bakes in (kept in the kiln cache,
    so the builds keep hitting it across sessions)."""

    keys: Path
    seed: Path  # a repository with only its initial metadata

    @property
    def root(self) -> Path:
        return self.seed / "metadata" / "1.root.json"


def _channel() -> Channel:
    from image.release.publish import Repo

    home = _cache_root() / "e2e-update"
    home.mkdir(parents=True, exist_ok=True)
    channel = Channel(home / "tuf-keys", home / "seed")
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not channel.root.exists():
            Repo(channel.seed, channel.keys, 30, create_keys=True).init()
    return channel


def _update_recipe(channel: Channel, version: str) -> Path:
    recipe = write_recipe(
        _cache_root() / "e2e-update" / "recipes" / version, version, broken_model=VERSIONS[version]
    )
    text = recipe.read_text().split("[update]")[0]
    recipe.write_text(
        text + "[update]\n"
        f'channels = ["{CHANNEL_URL}"]\n'
        f'tuf_root = "{channel.root}"\n'
        f"poll_interval_s = {POLL_S}\n"
        "poll_jitter_s = 0\n"
        # the guest's local time is UTC; a run in the last minute of the day waits for the next
        'window = "00:00-23:59"\n'
        'bandwidth_cap = "8M"\n'
        'reboot = "window"\n'
        "max_bundle_mib = 400\n"
    )
    return recipe


def _one_build(channel: Channel, version: str, workdir: Path) -> Build:
    recipe = _update_recipe(channel, version)
    reuse = os.environ.get("EDGEKILN_E2E_REUSE_BUILDS")  # development only: may be stale
    out = Path(reuse) / f"update-{version}" if reuse else workdir / version
    if (out / "build-report.json").exists():
        return reuse_build(out, version)
    return build(recipe, out, version)  # no compressed image: tests/e2e/device.py SKIP


@pytest.fixture(scope="module")
def update_builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Channel, Builds]]:
    """v1, v2 and v3 (broken model) with the ``[update]`` table; v1 first, the others in the
    background while v1 boots (one build at a time: the kiln cache has no lock)."""
    channel = _channel()
    workdir = tmp_path_factory.mktemp("update-builds")
    first, *later = VERSIONS
    done: Future[Build] = Future()
    done.set_result(_one_build(channel, first, workdir))
    futures = {first: done}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-update-build") as pool:
        for version in later:
            futures[version] = pool.submit(_one_build, channel, version, workdir)
        try:
            yield channel, Builds(futures)
        finally:
            for future in futures.values():
                future.cancel()


@dataclass
class Fleet:
    """The device, the channel it polls and what the steps learned so far."""

    device: Device
    channel: Channel
    builds: Builds
    www: Server
    repo: Path
    passed: list[str] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def kiln(self, *args: str) -> str:
        """The real ``kiln`` CLI; its stdout."""
        kiln = Path(sys.executable).parent / "kiln"
        env = {**os.environ, "EDGEKILN_KEY_PASSPHRASE": DEV_PASSPHRASE}
        proc = subprocess.run([str(kiln), *args], capture_output=True, text=True, env=env,
                              cwd=REPO, check=False)  # fmt: skip
        assert proc.returncode == 0, f"kiln {' '.join(args)}: {proc.stderr[-2000:]}"
        return proc.stdout

    def publish(self, version: str, *flags: str) -> str:
        bundle = self.builds[version].bundle
        return self.kiln("publish", "--keys", str(self.channel.keys), *flags, str(bundle),
                         str(self.repo))  # fmt: skip

    def bundle_hits(self, since: float = 0.0) -> list[tuple[str, int, int]]:
        """(path, first byte, bytes) of every bundle request that began after ``since``."""
        return [(h.path, h.start, h.sent) for h in self.www.hits
                if "/targets/" in h.path and h.began > since]  # fmt: skip

    def data_where(self) -> tuple[int, int]:
        """(offset, size) of the data partition now: the first boot grew it to the disk's end
        (the overlay was made 1 GiB larger), so v1's GPT no longer gives its size."""
        dev = self.device
        offset, _ = dev.layout["data"]
        info = json.loads(run(["qemu-img", "info", "-U", "--output=json", str(dev.vm.disk)]).stdout)
        return offset, int(info["virtual-size"]) - offset - 34 * 512  # the backup GPT

    def data_file(self, path: str) -> bytes | None:
        """A file on the device's data partition as the disk holds it now."""
        dev = self.device
        data = read_partition(dev.vm.disk, self.data_where(), dev.work / "data.part")
        try:
            return ext4_file(data, path, dev.work)
        finally:
            data.unlink()

    def events(self, kind: str) -> list[dict[str, object]]:
        """The agent's ``kind`` events in events.jsonl on data."""
        records = parse_results(self.data_file(EVENTS) or b"")
        return [r for r in records if r.get("kind") == kind]

    def wait_event(self, kind: str, timeout: float) -> list[dict[str, object]]:
        """events.jsonl is fsynced per event; read data until one of ``kind`` is there."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.events(kind)
            except AssertionError:  # read mid-write: read again
                found = []
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} event in events.jsonl within {timeout:.0f} s")
            time.sleep(3.0)


@pytest.fixture(scope="module")
def fleet(
    update_builds: tuple[Channel, Builds], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    channel, builds = update_builds
    work = tmp_path_factory.mktemp("hands-off")
    www = work / "www"
    www.mkdir()
    subprocess.run(["cp", "-a", str(channel.seed), str(www / "repo")], check=True)
    disk = provision(builds["1.0.0"].image, work / "v1.img")
    with serve(www) as server:
        port = server.url.rsplit(":", 1)[1]
        relay = [sys.executable, str(Path(__file__).with_name("relay.py")), port]
        config = VmConfig(
            disk=disk, overlay=True, cache="writeback", memory_mb=1024, cpus=2,
            relaunch_on_reset=True, guest_commands={GUEST_CHANNEL: relay},
        )  # fmt: skip
        vm = Vm(config, workdir=work / "vm")
        # room on data for a full bundle (230 MB) next to the device's own files: the data
        # partition grows to the disk's end on the first boot
        subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(vm.disk), "+1G"],
                       check=True)  # fmt: skip
        device = Device(vm, work, builds, partitions(disk))
        fleet = Fleet(device, channel, builds, server, www / "repo")
        device.data_where = fleet.data_where  # power_on counts records through the grown size
        try:
            yield fleet
        finally:
            vm.power_cut()
            print(f"\nserial console of the hands-off device: {vm.serial_log}")


def _require(fleet: Fleet, *steps: str) -> None:
    missing = [s for s in steps if s not in fleet.passed]
    if missing:
        pytest.fail(f"needs step(s) {', '.join(missing)} to have passed first")


def _pass_after(
    fleet: Fleet, pattern: str, since: float, mark: int, timeout: float
) -> re.Match[str]:
    """The console line ``pattern`` (after console offset ``mark``) of an update pass that asked
    the channel for its timestamp after host time ``since`` (passes never overlap and follow
    each other by ``POLL_S``, so a request begun before the line was seen belongs to the pass
    that logged it)."""
    vm = fleet.device.vm
    deadline = time.monotonic() + timeout
    while True:
        line = vm.wait_for(pattern, max(deadline - time.monotonic(), 1.0), since=mark)
        seen = time.time()
        asked = [h for h in fleet.www.hits if "timestamp.json" in h.path and since < h.began < seen]
        if asked:
            return line
        mark += line.end()  # a pass that read the channel before ``since``: the next one


def test_a_a_rollout_at_0_percent_is_not_taken(fleet: Fleet, figures: dict[str, object]) -> None:
    dev = fleet.device
    fleet.www.clear()
    # Power on first: the first pass comes 60 s after boot, and the guest boots while v2's
    # build finishes and its delta is made. Only a pass that read the channel after the
    # rollout started counts (an earlier one sees an empty channel, v1 alone or v2 held).
    powered = dev.power_on()
    fleet.publish("1.0.0")
    started = time.monotonic()
    out = fleet.publish("2.0.0", "--hold", "--deltas", "1", "--key",
                        str(_cache_root() / "keys" / "dev.key"))  # fmt: skip
    figures["ota_publish_v2_with_delta_s"] = round(time.monotonic() - started, 1)
    figures["ota_publish_v2_says"] = [line for line in out.splitlines() if "download" in line]
    fleet.kiln("rollout", "start", "2.0.0", str(fleet.repo), "--stages", "0,100",
               "--keys", str(fleet.channel.keys))  # fmt: skip
    rolled_out, mark = time.time(), len(dev.vm.console())
    figures["ota_power_on_to_rollout_started_s"] = round(rolled_out - powered, 1)
    dev.vm.wait_for(r"health gate: slot A committed", BOOT_S)
    _pass_after(fleet, r"\bupdate\.not-in-rollout\b", rolled_out, mark, BOOT_S + 3 * POLL_S)
    figures["ota_power_on_to_first_pass_s"] = round(time.time() - powered, 1)
    assert not fleet.bundle_hits(), "a bundle was fetched at 0 %"
    polled = [h for h in fleet.www.hits if h.status == 200 and h.began > rolled_out]
    figures["ota_first_poll_metadata_bytes"] = sum(h.sent for h in polled)
    fleet.passed.append("a")


def test_b_at_100_percent_the_delta_is_taken_installed_and_committed(
    fleet: Fleet, figures: dict[str, object]
) -> None:
    _require(fleet, "a")
    dev = fleet.device
    advanced = time.time()
    fleet.kiln("rollout", "advance", "2.0.0", str(fleet.repo), "--keys", str(fleet.channel.keys))
    # the gate of a tried slot says "passed" (and commits it); a committed slot's boots say
    # "committed"
    dev.vm.wait_for(r"health gate: slot B passed", INSTALL_S + 2 * BOOT_S)
    committed = time.time()
    figures["ota_rollout_100_to_committed_s"] = round(committed - advanced, 1)
    hits = fleet.bundle_hits(advanced)
    assert hits and all(".delta-" in path for path, _, _ in hits), hits
    wire = sum(sent for _, _, sent in hits)
    delta = next(p for p in (fleet.repo / "targets").rglob("*.delta-*.bundle"))
    full = fleet.builds["2.0.0"].bundle.stat().st_size
    figures["ota_v1_v2_delta_bytes_on_wire"] = wire
    figures["ota_v1_v2_delta_bundle_bytes"] = delta.stat().st_size
    figures["ota_v1_v2_full_bundle_bytes"] = full
    figures["ota_v1_v2_delta_pct_of_full"] = round(100 * wire / full, 2)
    assert wire <= delta.stat().st_size + CHUNK, (wire, delta.stat().st_size)
    env = dev.env()
    assert env.get("ek_committed") == "B" and not env.get("ek_try"), env
    assert dev.slot_holds("B", fleet.builds["2.0.0"]), "slot B does not hold v2's slot image"
    fleet.marks["v2_committed"] = committed
    fleet.passed.append("b")


def _streaming_full(fleet: Fleet) -> str | None:
    """The request path of the full bundle being downloaded, if one is."""
    return next((p for p in fleet.www.streaming if p.endswith(".full.bundle")), None)


def test_c_a_power_cut_mid_download_resumes_from_the_last_verified_chunk(
    fleet: Fleet, figures: dict[str, object]
) -> None:
    _require(fleet, "b")
    dev = fleet.device
    # the agent's next pass reconciles b's install as committed
    committed = fleet.wait_event("update.committed", BOOT_S)
    assert committed[-1].get("version") == "2.0.0", committed
    published = time.time()
    fleet.publish("3.0.0")  # full bundle only: no delta for the device's v2
    figures["ota_publish_v3_full_s"] = round(time.time() - published, 1)
    length = fleet.builds["3.0.0"].bundle.stat().st_size
    deadline = time.monotonic() + BOOT_S
    while (path := _streaming_full(fleet)) is None or fleet.www.streaming[path] < 24 * CHUNK:
        assert time.monotonic() < deadline, "the v3 download did not start"
        assert dev.vm.running, "the VM stopped before the v3 download"
        time.sleep(0.05)
    dev.vm.power_cut()  # in the middle of the download (at 8 MiB/s it lasts ~30 s)
    pushed = fleet.www.streaming[path]
    cut_at = time.time()
    journal = json.loads(fleet.data_file("/updates/fetch-v1.json") or b"{}")
    verified = int(journal.get("verified", 0))
    assert verified > 0, f"nothing verified on data before the cut: {journal}"
    powered = dev.power_on()
    dev.vm.wait_for(r"health gate: slot B committed", BOOT_S)
    deadline = time.monotonic() + INSTALL_S
    while True:
        after = [(p, s, n) for p, s, n in fleet.bundle_hits(cut_at) if p == path]
        if after and max(s + n for _, s, n in after) >= length:
            break
        assert time.monotonic() < deadline, f"the v3 download did not finish: {after}"
        time.sleep(1.0)
    # the payload resumes exactly where the device's journal says its verified bytes end;
    # below that only the head (manifest + signature, re-checked on every run) is fetched again
    assert verified in {s for _, s, _ in after}, (verified, after[:6])
    again = sum(min(s + n, verified) - s for _, s, n in after if s < verified)
    figures["ota_cut_pushed_before_cut_bytes"] = pushed
    figures["ota_cut_verified_on_data_bytes"] = verified
    figures["ota_cut_fetched_again_bytes"] = again
    figures["ota_cut_unverified_at_cut_bytes"] = pushed - verified  # incl. socket buffers
    figures["ota_cut_power_on_to_download_done_s"] = round(time.time() - powered, 1)
    assert again <= CHUNK, again
    # under the cap: the resumed payload request took at least bytes / cap (a lower bound on
    # its duration, so a slow machine cannot break it; socket buffers give some slack)
    hits = [h for h in fleet.www.hits if h.path == path and h.began > cut_at]
    body = max(hits, key=lambda h: h.sent)
    rate = body.sent / max(body.at - body.began, 1e-3)
    figures["ota_v3_download_rate_bytes_per_s"] = round(rate)
    assert rate <= CAP * 1.25, (rate, CAP)
    fleet.passed.append("c")


def test_d_a_release_that_rolled_back_is_not_tried_again(
    fleet: Fleet, figures: dict[str, object]
) -> None:
    _require(fleet, "c")
    vm = fleet.device.vm
    failed = vm.wait_for(r"slot A failed its health check", INSTALL_S + BOOT_S)
    failed_at = time.time()
    vm.wait_for(r"health gate: slot B committed", BOOT_S * 2, since=failed.end())
    vm.wait_for(r"\bupdate\.skipped-rolled-back\b", BOOT_S + 2 * POLL_S, since=failed.end())
    figures["ota_failed_gate_to_skip_s"] = round(time.time() - failed_at, 1)
    assert not fleet.bundle_hits(failed_at), "v3 was fetched again after it rolled back"
    rolled = fleet.wait_event("update.rolled-back", BOOT_S)
    assert rolled[-1].get("version") == "3.0.0", rolled
    env = fleet.device.env()
    assert env.get("ek_committed") == "B" and "A" in env.get("ek_bad", ""), env
    fleet.passed.append("d")
