"""Latency in tests: measured, never gated on.

The self-test's latency gate compares p95 times with a model's budget; on a shared 2-core CI
machine (or a slower CPU) that is the machine's load, not the code. Tests that check loading and
accuracy pass this factor so that only the accuracy gate decides; the latency gate itself is
tested with a factor that makes it fail (tests/inference/test_selftest.py).
"""

from __future__ import annotations

NO_LATENCY_GATE = 1e6
