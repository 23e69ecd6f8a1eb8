"""The fleet report in a real headless browser (Debian chromium): renders offline, with charts."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from image.fleet.report import write
from image.fleet.store import Store

pytestmark = pytest.mark.integration


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (tools/bootstrap.sh installs it)")
    return exe


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        chromium(),
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # chromium refuses root otherwise
        *args,
        page.as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_report_renders_offline_in_a_headless_browser(
    fleet: list[dict[str, object]], tmp_path: Path
) -> None:
    store = Store.open(str(tmp_path / "fleet.db"))
    for m in fleet:
        store.insert(dict(m))
    page = write(store, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    done = browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1000,2400")
    assert shot.exists(), done.stderr[-2000:]
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert (width, height) == (1000, 2400)
    dom = browse(page, tmp_path, "--dump-dom").stdout  # the document as the browser built it
    assert dom.count("<svg") >= 4 and "polyline" in dom and 'class="bar"' in dom
    assert "dev-077" in dom.split('id="anomalies"')[1]
