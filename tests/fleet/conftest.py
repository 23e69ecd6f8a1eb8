"""Fixtures for the fleet tests: a real mosquitto, the simulated fleet, ingester processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet.ingester import RUNNING
from tests.fleet.simulate import fleet_messages
from tests.inference.mqtt_broker import Broker


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


@pytest.fixture(autouse=True)
def _stop_leftover_ingesters() -> Iterator[None]:
    """A test that fails half-way leaves no ingester process behind."""
    yield
    while RUNNING:
        proc = RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
