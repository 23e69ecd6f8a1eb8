"""``kiln fleet ingest`` as a real process for the fleet tests and the bench.

Kept out of conftest.py: test modules import it as ``tests.fleet.ingester``, and conftest's
clean-up must see the same ``RUNNING`` list.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNING: list[subprocess.Popen[bytes]] = []


class IngestProcess:
    """``kiln fleet ingest`` as a real process (so a test can SIGKILL it)."""

    def __init__(self, port: int, db: str, client_id: str, log: Path, *extra: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "image.cli",
                "fleet",
                "ingest",
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--db",
                db,
                "--client-id",
                client_id,
                *extra,
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        RUNNING.append(self.proc)
        self._wait_for("subscribed to", offset=0)

    def _wait_for(self, text: str, offset: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace")[offset:]:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"ingester exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        pytest.fail(f"ingester never said {text!r}: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> str:
        """SIGTERM; its last stderr line (stored / duplicates / rejected)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        lines = self.log.read_text().strip().splitlines()
        return lines[-1] if lines else ""
