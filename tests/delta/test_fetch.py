"""``appliance update fetch``: Range resume after resets and kills, chunk checks, cap, window."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.bundle import PayloadSource, open_bundle, write_bundle
from appliance.bundle.errors import ChunkDigestError
from appliance.bundle.manifest import Manifest
from appliance.ota.errors import SourceError
from appliance.ota.fetch import JOURNAL, Fetcher, OutsideWindowError, Throttle, Window, fetch
from tests.bundle.kit import CREATED, KEY, PRODUCT, TARGET, policy, raw_pub

from .rangeserver import State, serve

CHUNK = 32 * 1024
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def bundle() -> bytes:
    image = random.Random(1).randbytes(40 * CHUNK - 1000)  # incompressible: wire ~ chunk
    out = io.BytesIO()
    write_bundle(
        out, key=KEY, product=PRODUCT, targets=[TARGET], version="2.0.0", security_version=1,
        created=CREATED, payloads=[PayloadSource.slot_image_bytes(image)]
        if hasattr(PayloadSource, "slot_image_bytes")
        else [PayloadSource("rootfs.img.zst", "full", image, "zstd")],
        chunk_size=CHUNK,
    )  # fmt: skip
    return out.getvalue()


def manifest(data: bytes) -> Manifest:
    return open_bundle(io.BytesIO(data), policy()).manifest


def max_unit(data: bytes) -> int:
    return max(c.size for p in manifest(data).payloads for c in p.chunks)


@pytest.mark.parametrize("seed", range(4))
def test_resets_at_random_points_resume_and_refetch_at_most_one_chunk(
    bundle: bytes, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    resets = sorted(rng.sample(range(1, len(bundle)), 5))
    # Offsets of the total sent, spread so each lands in a later request.
    state = State(bundle, resets=[r + i * CHUNK for i, r in enumerate(resets)])
    interruptions, received = 0, 0
    with serve(state) as url:
        while True:
            fetcher = Fetcher(url, tmp_path, policy())
            try:
                path = fetcher.run()
                received += fetcher.fetched
                break
            except SourceError:
                interruptions += 1
                received += fetcher.fetched
                assert interruptions < 20
        again = Fetcher(url, tmp_path, policy())
        assert again.run() == path  # already complete: only the head is read
        assert again.fetched < max_unit(bundle)
    assert path.read_bytes() == bundle
    assert interruptions == 5
    # What the client received twice: at most the unit in flight per interruption (bytes the
    # reset destroyed in flight were never received, so they are not re-fetches).
    # The head (manifest + signature) is re-read on each run to notice a new release.
    head = len(bundle) - sum(c.size for c in manifest(bundle).payloads[0].chunks) - 2048 - 512
    refetched = received - len(bundle)
    assert 0 <= refetched <= interruptions * (max_unit(bundle) + head), (refetched, head)
    assert head < max_unit(bundle) // 2
    journal = json.loads((tmp_path / JOURNAL).read_text())
    assert journal["complete"] and journal["verified"] == len(bundle)


def test_process_kill_resumes_from_the_journal(bundle: bytes, tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    from appliance.bundle import Keyring, TrustedKey

    ring.write_bytes(Keyring(1, (TrustedKey.from_public_key(raw_pub(KEY)),)).to_bytes())
    state = State(bundle, piece=2048, delay=0.004)  # ~0.5 MB/s: the process gets killed midway
    argv = [
        str(BIN / "appliance"), "update", "fetch", "URL", "--data-dir", str(tmp_path / "data"),
        "--keyring", str(ring), "--product", PRODUCT, "--target", TARGET, "--retries", "0",
    ]  # fmt: skip
    rng = random.Random(3)
    kills = 0
    with serve(state) as url:
        argv[3] = url
        for _ in range(4):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.3, 0.9))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert kills >= 2
    assert Path(done.stdout.strip()).read_bytes() == bundle
    # Each kill loses at most the unit in flight plus what sat in the socket buffers (a few
    # server pieces); every resumed request starts where the journal said.
    slack = 8 * state.piece
    head = 10 * 1024
    assert state.sent - len(bundle) <= kills * (max_unit(bundle) + slack + head)


def test_tampered_chunk_on_the_server_leaves_nothing(bundle: bytes, tmp_path: Path) -> None:
    bad = bytearray(bundle)
    bad[len(bad) // 2] ^= 1
    with serve(State(bytes(bad))) as url, pytest.raises(ChunkDigestError, match="signed sha256"):
        Fetcher(url, tmp_path, policy()).run()
    assert list(tmp_path.iterdir()) == []  # a refused download keeps no part and no journal
    # The good file then downloads from the start.
    state = State(bundle)
    with serve(state) as url:
        assert fetch(url, tmp_path, policy()).read_bytes() == bundle
    assert state.starts[-1] < 1024 + len(bundle) // 100


def test_window_and_throttle(
    bundle: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Window.parse("22:00-05:00")
    day = 1_750_000_000 - 1_750_000_000 % 86400
    assert w.allows(day + 23 * 3600) and w.allows(day + 4 * 3600)
    assert not w.allows(day + 12 * 3600)
    with serve(State(bundle)) as url:
        fetcher = Fetcher(url, tmp_path, policy(), window=w, now=lambda: day + 12 * 3600)
        with pytest.raises(OutsideWindowError):
            fetcher.run()
    assert OutsideWindowError.exit_code == 75
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = iter([0.0, 0.5, 1.0]).__next__
    throttle = Throttle(1000, clock=clock)
    throttle.account(2000)  # 2 s of budget used after 0.5 s: sleep 1.5 s
    throttle.account(1000)  # 3 s of budget used after 1.0 s: sleep 2 s
    assert slept == [1.5, 2.0]


def test_fetched_bundle_installs_like_a_usb_file(bundle: bytes, tmp_path: Path) -> None:
    with serve(State(bundle)) as url:
        path = fetch(url, tmp_path, policy())
    with open(path, "rb") as f:
        open_bundle(f, policy()).verify_all()
    assert os.path.getsize(path) == len(bundle)
