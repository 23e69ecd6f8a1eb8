"""How ``make test`` (``pytest -n 2 --dist loadgroup``) spreads the suite over two workers.

A *work unit* is a test file, or every file marked with one ``xdist_group`` name: each unit
runs whole, in collection order, on one worker, so a module- or session-scoped fixture is built
once and ordered tests (tests/e2e/test_lifecycle.py, a -> f) stay in order. Units start longest
first (``WEIGHTS``: seconds measured in CI; every other unit after them, in collection order), so
the two workers finish close together. A worker is given its next unit only when it is about to
run the last test of its current one: nothing long is queued behind a worker that is still busy.

pytest-xdist's own ``loadgroup`` would hand out each unmarked test alone (module fixtures built
twice, files split) and orders units by their number of tests, not by their length.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from xdist.scheduler import LoadScopeScheduling

from tests.e2e.conftest import arm64_skip_reason

#: Seconds a unit takes in CI (a file's tests with setup and teardown, or a group's), for units
#: over about a minute; the rest keep collection order after these. From CI's table of
#: 2026-12-06 (two workers, cold kiln cache; e2e-kiln less the 900 s its failed wait cost):
#: only the order matters. Update them from the "seconds per worker and work unit" table
#: printed at the end of a run.
WEIGHTS: dict[str, float] = {
    "e2e-kiln": 1635,  # + 65-120 s: test_site_lan.py's hung-agent watchdog step
    # not yet in a CI table. Measured alone at load 2-4 with an empty kiln cache: 607 s (the
    # lifecycle's v1 build 359 s of it: arm64 base 183 s, arm64 runtime 162 s; then the boots,
    # the devboard build, the runtime's tests; tests/e2e/README.md). Weighted above the next
    # unit so that it starts first, beside e2e-kiln: each worker then makes one Debian base
    # (arm64 here, x86 there) and the hands-off file, after it, finds the x86 base and runtime
    # cached. With the lifecycle skipped (EDGEKILN_E2E_ARM64=0 or ARM64_BY_DEFAULT) the group
    # is the arm64 runtime's tests alone: its freeze, ~170 s cold. +250 s since the Jetson
    # runtime's arm64 guest (its freeze ~210 s, shared with test_l4t.py; the guest 35-40 s).
    "arm64": 1450 if arm64_skip_reason() is None else 170,
    "tests/e2e/test_hands_off_update.py": 1190,
    # not yet in a CI table: alone at load 15-18, 423 s with the intel-openvino runtime frozen
    # in it (it starts before test_freeze.py, which then finds that runtime in the kiln cache)
    "tests/e2e/test_openvino_vivid.py": 420,
    "tests/image/test_l4t.py": 205,
    "tests/image/test_build.py": 180,
    "tests/image/test_freeze.py": 90,
    "tests/image/test_model_build.py": 70,
    "tests/models/test_reference_models.py": 70,
    "tests/image/test_model_select.py": 70,
    "tests/lan/test_discovery.py": 55,
    "tests/models/test_isa_gate_onnxruntime.py": 45,
}


def unit_of(nodeid: str) -> str:
    """The work unit of a test: its ``xdist_group`` name (``...@name``), else its file."""
    if nodeid.rfind("@") > nodeid.rfind("]"):  # a parameter id may hold an "@"
        return nodeid.rsplit("@", 1)[1]
    return nodeid.split("::", 1)[0]


class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """Whole files and ``xdist_group`` groups, longest first, handed out one at a time."""

    def _split_scope(self, nodeid: str) -> str:
        return unit_of(nodeid)

    def _reschedule(self, node: Any) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        # A worker holds back its last test until it knows the next one (pytest's teardown
        # needs it): give it more when only that one is left, never earlier.
        while self.workqueue and self._pending_of(self.assigned_work[node]) < 2:
            self._assign_work_unit(node)

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:
            for node in self.nodes:
                self._reschedule(node)
            return
        if not self._check_nodes_have_same_collection():
            self.log("**Different tests collected, aborting run**")
            return
        self.collection = list(next(iter(self.registered_collections.values())))
        if not self.collection:
            return
        units: dict[str, dict[str, bool]] = {}
        for nodeid in self.collection:
            units.setdefault(self._split_scope(nodeid), {})[nodeid] = False
        order = sorted(units, key=lambda unit: -WEIGHTS.get(unit, 0.0))  # stable: ties keep order
        self.workqueue = OrderedDict((unit, units[unit]) for unit in order)
        for node in self.nodes:
            self._reschedule(node)
