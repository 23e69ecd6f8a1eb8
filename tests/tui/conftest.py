"""A real demo device on disk for every TUI test, and a Pilot that counts keystrokes."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.device import Device
from appliance.tui.demo import DEMO_EPOCH, build_demo

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "recipes" / "models" / "inspect-primary"
SIZE = (80, 24)
#: Keystrokes each task took in the Pilot tests (printed at the end; README figures).
KEYSTROKES: dict[str, int] = {}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real reference model when it has been generated, else the inference tests' tiny one.

    A private copy: the tests never see the package change under them (tools/refmodel may be
    regenerating it while tests run).
    """
    from appliance.errors import ApplianceError
    from appliance.inference.package import load_package
    from tests.inference.fixtures import make_package

    if (REFERENCE / "model.json").exists():
        copy = tmp_path_factory.mktemp("model") / "inspect-primary"
        try:
            shutil.copytree(REFERENCE, copy)
            load_package(copy)
            return copy
        except (OSError, ApplianceError):
            pass  # caught mid-regeneration: use the tiny package

    return make_package(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def device(tmp_path: Path, model_dir: Path) -> Device:
    """A private demo device (bundles, grubenv, slots, data) that a test may change."""
    return build_demo(tmp_path / "device", model_dir, now=DEMO_EPOCH)


class Keys:
    """Press keys through the Pilot and count them for one task."""

    def __init__(self, pilot: Any, task: str) -> None:
        self.pilot = pilot
        self.task = task
        self.count = 0

    async def __call__(self, *keys: str) -> None:
        for key in keys:
            await self.pilot.press(key)
            self.count += 1
        await self.pilot.pause()

    async def type(self, text: str) -> None:
        """Type ``text`` one key per character."""
        await self(*[_key_name(c) for c in text])

    def record(self) -> int:
        KEYSTROKES[self.task] = max(KEYSTROKES.get(self.task, 0), self.count)
        return self.count


def _key_name(char: str) -> str:
    names = {"/": "slash", ".": "full_stop", ",": "comma", " ": "space", ":": "colon", "-": "minus"}
    return names.get(char, char)


def run_app(app: Any, body: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``body(pilot)`` inside ``app.run_test`` at 80x24."""

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await body(pilot)

    asyncio.run(main())


async def wait_for(pilot: Any, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Pause until ``predicate()`` holds (workers run on threads)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


def actions(device: Device) -> list[dict[str, Any]]:
    """The technician actions logged on the device so far."""
    if not device.actions_path.exists():
        return []
    return [json.loads(line) for line in device.actions_path.read_text().splitlines()]


def _counts() -> dict[str, int]:
    # The test modules import this file as tests.tui.conftest, pytest loads it under
    # another name: read the counts from the module the tests wrote to.
    from tests.tui import conftest as imported

    return imported.KEYSTROKES


def write_keystrokes(terminalreporter: Any, counts: dict[str, int]) -> None:
    """The keystrokes each task took (the README's figures)."""
    if counts:
        terminalreporter.write_sep("-", "technician TUI: keystrokes per task")
        for task, count in sorted(counts.items()):
            terminalreporter.write_line(f"{count:4d}  {task}")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist: hand the counts to the controller (tests/conftest.py prints them)."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["tui_keystrokes"] = dict(_counts())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the keystrokes each task took (a run without workers)."""
    if not hasattr(terminalreporter.config, "workerinput"):
        write_keystrokes(terminalreporter, _counts())
