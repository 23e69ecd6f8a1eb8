"""Acceptance: SIGKILL the installer at >= 200 random points, power-cut its write cache, boot."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tools.powercut import IMAGE_SIZE, STATE_POINTS, Device, one_run, run


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["grub", "uboot"])
def test_200_random_cuts_always_boot_a_signed_slot_and_rerun_cleanly(loader: str) -> None:
    cuts, unbootable, failed_reruns = run(200, seed=20261127, loader=loader)
    assert (cuts, unbootable, failed_reruns) == (200, 0, 0)


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
@pytest.mark.parametrize("loader", ["grub", "uboot"])
@pytest.mark.parametrize("cut", [*STATE_POINTS, 0, 1, IMAGE_SIZE // 2, IMAGE_SIZE - 1])
def test_each_state_transition_and_edge_offset(
    tmp_path: Path, cut: str | int, loader: str, direct: bool
) -> None:
    device = Device(tmp_path / "device", loader, direct)
    point, bootable, rerun_ok = one_run(device, random.Random(str(cut)), cut)
    assert point == str(cut)
    assert bootable and rerun_ok
