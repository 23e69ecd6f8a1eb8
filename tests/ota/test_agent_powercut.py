"""A power cut (SIGKILL) in the middle of the agent's download: the next run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tools.powercut import CHUNK

from .agent_kit import make_device, publish_to, release
from .channelserver import Server

REPO = Path(__file__).resolve().parents[2]


def test_killed_mid_download_resumes_from_the_last_verified_chunk(
    tmp_path: Path, www: Server
) -> None:
    d = make_device(tmp_path, www)
    v2 = release(d.dev, tmp_path, 2, "2.0.0")
    publish_to(www, v2)
    device = {"product": "powercut", "target": "generic-x86-64", "version": "1.0.0"}
    update = {"channels": [d.channel], "tuf_root": str(d.tuf_root), "reboot": "manual",
              "rate": 64 * 1024}  # fmt: skip
    (tmp_path / "device.json").write_text(json.dumps(device))
    (tmp_path / "update.json").write_text(json.dumps(update))
    ring = tmp_path / "keyring.json"
    ring.write_bytes(d.dev.keyring.to_bytes())
    env = {**os.environ, "EDGEKILN_DEVICE_CONFIG": str(tmp_path / "device.json"),
           "EDGEKILN_UPDATE_CONFIG": str(tmp_path / "update.json"),
           "PYTHONPATH": str(REPO)}  # fmt: skip
    argv = [sys.executable, "-m", "appliance.cli", "update", "run", "--data-dir", str(d.data),
            "--loader", f"grub:{d.dev.root / 'esp'}", "--booted", "A", "--keyring", str(ring),
            "--slot", f"A={d.dev.slots['A']}", "--slot", f"B={d.dev.slots['B']}"]  # fmt: skip
    journal = d.data / "updates" / "fetch-v1.json"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    verified = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            verified = json.loads(journal.read_text())["verified"]
            if verified > 4 * CHUNK:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the power cut: no cleanup runs
    proc.wait()
    verified = json.loads(journal.read_text())["verified"]
    length = v2.stat().st_size
    assert 4 * CHUNK < verified < length
    status = subprocess.run([*argv[:3], "update", "status", "--data-dir", str(d.data)],
                            env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"bytes downloaded  {verified}\n" in status, status
    before = d.dev.loader().read()
    assert before.trying is None  # nothing installed yet
    www.clear()
    update["rate"] = None
    (tmp_path / "update.json").write_text(json.dumps(update))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "update.reboot-pending"
    assert d.dev.loader().read().trying == "B"
    refetched = sum(h.sent for h in www.hits if "/targets/" in h.path)
    head = 512 + 4096  # the first header and the manifest + signature, re-read every run
    assert refetched <= (length - verified) + head + CHUNK
