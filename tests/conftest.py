"""Suite-wide hooks: the two-worker schedule of ``make test`` and where its time went.

``make test`` runs ``pytest -n 2 --dist loadgroup``; with that, tests/scheduling.py decides which
worker runs what (whole files and ``xdist_group`` groups, longest first). Rules for tests that
run beside each other: tests/README.md.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None  # another --dist: pytest-xdist's own scheduler
    from tests.scheduling import GroupScheduling

    return GroupScheduling(config, log)


#: (worker, unit) -> seconds of setup, call and teardown of its tests (in the controller)
_SECONDS: dict[tuple[str, str], float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.scheduling import unit_of

    node = getattr(report, "node", None)  # set on the controller for a worker's report
    worker = node.gateway.id if node is not None else "main"
    _SECONDS[(worker, unit_of(report.nodeid))] += report.duration


#: what the workers counted in tests/tui (keystrokes per task), merged in the controller
_KEYSTROKES: dict[str, int] = {}


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    counts = getattr(node, "workeroutput", {}).get("tui_keystrokes", {})
    for task, count in counts.items():
        _KEYSTROKES[task] = max(_KEYSTROKES.get(task, 0), count)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Busy seconds per worker and the longest work units (to balance tests/scheduling.py)."""
    if hasattr(config, "workerinput"):
        return
    if _KEYSTROKES:
        from tests.tui.conftest import write_keystrokes

        write_keystrokes(terminalreporter, _KEYSTROKES)
    if sum(_SECONDS.values()) < 60:
        return  # a few tests: nothing to balance
    busy: dict[str, float] = defaultdict(float)
    for (worker, _), seconds in _SECONDS.items():
        busy[worker] += seconds
    terminalreporter.write_sep("-", "seconds per worker and work unit (tests/scheduling.py)")
    for worker, seconds in sorted(busy.items()):
        terminalreporter.write_line(f"{worker}: busy {seconds:7.1f} s")
    longest = sorted(_SECONDS.items(), key=lambda kv: -kv[1])[:25]
    for (worker, unit), seconds in longest:
        if seconds >= 20:
            terminalreporter.write_line(f"{seconds:7.1f} s  {worker}  {unit}")
