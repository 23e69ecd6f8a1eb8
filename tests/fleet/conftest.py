"""Fixtures for the fleet tests: a real mosquitto, the simulated fleet, ingester processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.simulate import fleet_messages
from tests.inference.mqtt_broker import Broker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    """100 devices x 4 windows; dev-007 slow, dev-042 wrong predictions, dev-077 hot."""
    return fleet_messages(tmp_path_factory.mktemp("fleet"))


_RUNNING: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_leftover_ingesters() -> Iterator[None]:
    """A test that fails half-way leaves no ingester process behind."""
    yield
    while _RUNNING:
        proc = _RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
        _RUNNING.append(self.proc)
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
