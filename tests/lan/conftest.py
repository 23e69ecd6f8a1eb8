"""Fixtures of the site-LAN tests: the veth namespace, a release key, devices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.lan_rig import NetnsUnavailable, Release, Veth


@pytest.fixture(scope="module")
def veth() -> Iterator[Veth]:
    try:
        pair = Veth.make()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces are not available here (need root and ip): {exc}")
    try:
        yield pair
    finally:
        pair.remove()


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    return Release(tmp_path_factory.mktemp("release"))


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config dir for the laptop's paired-devices file."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"
