"""Session fixtures: the QEMU test profile built once per session in three versions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from image import cache
from tests.e2e.device import Build, build, reuse_build, write_recipe

#: version -> the primary model fails its health check
VERSIONS = {"1.0.0": False, "2.0.0": False, "3.0.0": True}

#: The arm64 QEMU lifecycle (test_arm64_lifecycle.py) and the coral-devboard build
#: (tests/image/test_devboard_arm64.py) run by default, in CI too. ``EDGEKILN_E2E_ARM64=0``
#: skips them (a cold arm64 base costs minutes of qemu-user), ``=1`` runs them whatever this
#: says. To make them opt-in again, set this to False: the one place to flip.
ARM64_BY_DEFAULT = True


def arm64_skip_reason() -> str | None:
    """Why the arm64 QEMU tests are skipped now (``EDGEKILN_E2E_ARM64`` and the default)."""
    value = os.environ.get("EDGEKILN_E2E_ARM64", "").strip()
    if value not in ("", "0", "1"):
        return f"EDGEKILN_E2E_ARM64={value!r}: set it to 1 (run) or 0 (skip)"
    if value == "1" or (value == "" and ARM64_BY_DEFAULT):
        return None
    if value == "0":
        return "EDGEKILN_E2E_ARM64=0 (cold arm64 base: minutes of qemu-user)"
    return "opt-in: EDGEKILN_E2E_ARM64=1 (cold arm64 base: minutes of qemu-user)"


def _cache_root() -> Path:
    return Path(os.environ.get("EDGEKILN_CACHE") or Path.home() / ".cache" / "edgekiln")


class Builds(Mapping[str, Build]):
    """Builds by version; one still being built is waited for when it is first asked for."""

    def __init__(self, futures: dict[str, Future[Build]]) -> None:
        self._futures = futures

    def __getitem__(self, version: str) -> Build:
        return self._futures[version].result()

    def __iter__(self) -> Iterator[str]:
        return iter(self._futures)

    def __len__(self) -> int:
        return len(self._futures)


def _one_build(recipes: Path, out: Path | None, workdir: Path, version: str) -> Build:
    # The recipes live in the shared kiln cache: a test on the other worker may be writing
    # the same version's (tests/e2e/test_boot_disk.py builds v1 too).
    with cache.locked(recipes / f".{version}.lock"):
        recipe = write_recipe(recipes / version, version, broken_model=VERSIONS[version])
    if out is not None and (out / version / "build-report.json").exists():
        return reuse_build(out / version, version)
    # no compressed image (for flashing; the device boots the raw one): tests/e2e/device.py SKIP
    return build(recipe, (out or workdir) / version, version)


def _reuse_dir() -> Path | None:
    reuse = os.environ.get("EDGEKILN_E2E_REUSE_BUILDS")  # development only: may be stale
    return Path(reuse) if reuse else None


@pytest.fixture(scope="session")
def v1_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """v1 of the QEMU test profile, built once per session with the real ``kiln``.

    Every device that starts on v1 boots this build (``builds`` hands out the same one), so a
    file that needs only v1 (tests/e2e/test_boot_disk.py) starts no other build, and in the
    ``e2e-kiln`` group v1 is built once, not once per file.
    """
    workdir = tmp_path_factory.mktemp("builds")
    return _one_build(_cache_root() / "e2e-recipes", _reuse_dir(), workdir, "1.0.0")


@pytest.fixture(scope="session")
def builds(v1_build: Build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    """v1, v2 and v3 (broken model) of the QEMU test profile, built with the real ``kiln``.

    v1 is ``v1_build`` (the device boots it); v2 and v3 are built one after the other in the
    background meanwhile (the first update needs v2 only after the first boot), one build at a
    time (the QEMU guest and the other test worker need the cores too). Builds on the other
    worker share the kiln cache safely (docs/decisions.md §31).

    ``EDGEKILN_E2E_REUSE_BUILDS=DIR`` keeps builds in DIR and reuses them (while iterating on
    the tests; stale once appliance/ or image/ change).

    Recipes and their model packages live in the kiln cache (made once, so later sessions hit
    the cached slots); images and bundles go to a session directory.
    """
    recipes = _cache_root() / "e2e-recipes"
    out = _reuse_dir()
    workdir = tmp_path_factory.mktemp("builds")
    first, *later = VERSIONS
    done: Future[Build] = Future()
    done.set_result(v1_build)
    futures = {first: done}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2e-build") as pool:
        for version in later:
            futures[version] = pool.submit(_one_build, recipes, out, workdir, version)
        try:
            yield Builds(futures)
        finally:
            for future in futures.values():
                future.cancel()  # not started yet: not needed any more


@pytest.fixture(scope="session")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """Measured figures; written to $EDGEKILN_E2E_FIGURES (or the session dir) at the end."""
    values: dict[str, object] = {}
    yield values
    path = Path(
        os.environ.get("EDGEKILN_E2E_FIGURES")
        or tmp_path_factory.getbasetemp() / "e2e-figures.json"
    )
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    print(f"\ne2e figures ({path}):\n{json.dumps(values, indent=2, sort_keys=True)}")
