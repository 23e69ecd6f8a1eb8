"""Helpers for the telemetry tests: a simulated clock and a lighting-changed reference split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

REFERENCE_PACKAGE = Path(__file__).resolve().parents[2] / "recipes" / "models" / "inspect-primary"


class SimClock:
    """A clock the test moves: ``tick()`` once per frame at ``fps``."""

    def __init__(self, start: float = 1_800_000_000.0, fps: float = 30.0) -> None:
        self.now = start
        self.step = 1.0 / fps

    def __call__(self) -> float:
        return self.now

    def tick(self, *_: object) -> None:
        self.now += self.step


def lit_split(tmp_path: Path, factor: float) -> Path:
    """The reference split with its brightness scaled by ``factor`` (a lighting change)."""
    with np.load(REFERENCE_PACKAGE / "reference.npz") as z:
        images = z["images"]
    out = tmp_path / f"reference-x{factor:g}.npz"
    scaled = np.clip(images.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    np.savez(out, images=scaled, labels=np.zeros(len(scaled), np.int64))
    return out


def wait_for(cond: object, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
