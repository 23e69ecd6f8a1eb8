"""Session fixtures: the QEMU test profile built once per session in three versions."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.device import Build, build, reuse_build, write_recipe

#: version -> the primary model fails its health check
VERSIONS = {"1.0.0": False, "2.0.0": False, "3.0.0": True}


def _cache_root() -> Path:
    return Path(os.environ.get("EDGEKILN_CACHE") or Path.home() / ".cache" / "edgekiln")


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Build]:
    """v1, v2 and v3 (broken model) of the QEMU test profile, built with the real ``kiln``.

    ``EDGEKILN_E2E_REUSE_BUILDS=DIR`` keeps builds in DIR and reuses them (while iterating on
    the tests; stale once appliance/ or image/ change).

    Recipes and their model packages live in the kiln cache (made once, so later sessions hit
    the cached slots); images and bundles go to a session directory.
    """
    recipes = _cache_root() / "e2e-recipes"
    reuse = os.environ.get("EDGEKILN_E2E_REUSE_BUILDS")  # development only: may be stale
    out = Path(reuse) if reuse else tmp_path_factory.mktemp("builds")
    done = {}
    for version, broken in VERSIONS.items():
        recipe = write_recipe(recipes / version, version, broken_model=broken)
        if reuse and (out / version / "build-report.json").exists():
            done[version] = reuse_build(out / version, version)
            continue
        done[version] = build(recipe, out / version, version)
    return done


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
