"""The trusted clock (docs/decisions.md §6): synced since boot, never behind the latest seen."""

from __future__ import annotations

from pathlib import Path

from appliance.ota.clock import LATEST_NAME, RECORD_EVERY_S, latest_trusted, trusted_now


def test_not_synced_is_not_trusted(tmp_path: Path) -> None:
    assert trusted_now(tmp_path, tmp_path / "synchronized", clock=lambda: 2e9) is None
    assert not (tmp_path / LATEST_NAME).exists()


def test_synced_clock_is_trusted_and_remembered(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    assert trusted_now(tmp_path, flag, clock=lambda: 2_000_000_000.5) == 2_000_000_000
    assert latest_trusted(tmp_path) == 2_000_000_000
    # Within the hour: trusted, not rewritten (data is flash).
    assert trusted_now(tmp_path, flag, clock=lambda: 2_000_000_100) == 2_000_000_100
    assert latest_trusted(tmp_path) == 2_000_000_000
    later = 2_000_000_000 + RECORD_EVERY_S
    assert trusted_now(tmp_path, flag, clock=lambda: later) == later
    assert latest_trusted(tmp_path) == later


def test_a_clock_behind_the_latest_trusted_time_is_not_trusted(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    trusted_now(tmp_path, flag, clock=lambda: 2_000_000_000)
    # A forged time server (or a reset RTC) sets the clock back: expiry would pass again.
    assert trusted_now(tmp_path, flag, clock=lambda: 1_900_000_000) is None
    assert latest_trusted(tmp_path) == 2_000_000_000
