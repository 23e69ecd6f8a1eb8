"""The health gate: commit a tried slot only when services run and the model is right and fast.

Runs with no server contact. The self-test runs in a child process (with a time limit), so a
hung model cannot hang the gate and the agent stays free of inference threads before it forks
its workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.slots import control
from appliance.slots.errors import BelowFloorError
from appliance.slots.loader import Loader
from appliance.slots.state import Slot

log = logging.getLogger(__name__)


@dataclasses.dataclass
class HealthReport:
    """Whether the slot is healthy, and why not."""

    passed: bool
    reasons: list[str]
    services: dict[str, bool]
    selftest: dict[str, object] | None = None


def services_active(units: Sequence[str]) -> dict[str, bool]:
    """``systemctl is-active`` for each unit."""
    result = {}
    for unit in units:
        proc = subprocess.run(
            ["systemctl", "is-active", "--quiet", unit], capture_output=True, check=False
        )
        result[unit] = proc.returncode == 0
    return result


def _selftest_child(conn: multiprocessing.connection.Connection, kwargs: dict[str, object]) -> None:
    from appliance.inference.selftest import run_selftest

    try:
        report = run_selftest(**kwargs)  # type: ignore[arg-type]
        conn.send_bytes(json.dumps({"report": report.to_json()}, default=str).encode())
    except Exception as exc:  # reported to the gate, which fails the slot
        conn.send_bytes(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())


def selftest_in_child(
    package_dir: Path,
    backend: str | None = None,
    limit: int | None = 16,
    budget_factor: float = 1.0,
    timeout_s: float = 600.0,
) -> tuple[dict[str, object] | None, str | None]:
    """(report, error) of ``run_selftest`` run in a child process."""
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    kwargs = {
        "package_dir": package_dir,
        "backend": backend,
        "limit": limit,
        "budget_factor": budget_factor,
    }
    child = ctx.Process(target=_selftest_child, args=(writer, kwargs), daemon=True)
    child.start()
    writer.close()
    try:
        if not reader.poll(timeout_s):
            child.kill()
            return None, f"self-test did not finish within {timeout_s:.0f} s"
        result = json.loads(reader.recv_bytes())
    except (EOFError, OSError):
        return None, f"self-test process died (exit code {child.exitcode})"
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
        reader.close()
    return result.get("report"), result.get("error")


def run_health_check(
    package_dir: Path,
    *,
    services: Sequence[str] = (),
    backend: str | None = None,
    limit: int | None = 16,
    budget_factor: float = 1.0,
    timeout_s: float = 600.0,
    service_check: Callable[[Sequence[str]], dict[str, bool]] = services_active,
) -> HealthReport:
    """Services up, then the reference subset through the model within its latency budget."""
    status = service_check(services) if services else {}
    reasons = [f"service {unit} is not active" for unit, up in status.items() if not up]
    report, error = selftest_in_child(package_dir, backend, limit, budget_factor, timeout_s)
    if error:
        reasons.append(f"self-test: {error}")
    elif report is not None and not report.get("passed"):
        why = report.get("reasons")
        reasons.extend(
            f"self-test: {r}" for r in (why if isinstance(why, list) and why else ["failed"])
        )
    return HealthReport(not reasons, reasons, status, report)


def health_gate(
    loader: Loader,
    booted: Slot,
    data_dir: Path | None,
    check: Callable[[], HealthReport],
    reboot: Callable[[], None],
) -> str:
    """Reconcile the slot state after boot and decide a trial.

    Returns ``"committed"`` (nothing on trial), ``"passed"`` (the booted slot was committed) or
    ``"failed"`` (marked bad; ``reboot`` was called so the loader returns to the committed slot).
    """
    state = control.reconcile(loader, booted, data_dir)
    if not control.on_trial(state, booted):
        return "committed"
    try:
        report = check()
    except Exception as exc:  # a check that cannot run is a failed check, not a crashed agent
        report = HealthReport(False, [f"health check could not run: {exc}"], {})
    if report.passed:
        try:
            control.commit_booted(loader, booted, data_dir)
        except BelowFloorError as exc:  # booted below the floor (e.g. a loader fallback)
            report = HealthReport(False, [str(exc)], report.services, report.selftest)
        else:
            log.warning("slot %s passed its health check and is committed", booted)
            return "passed"
    log.error("slot %s failed its health check: %s", booted, "; ".join(report.reasons))
    control.fail_booted(loader, booted, data_dir)
    reboot()
    return "failed"


def systemctl_reboot() -> None:
    """Ask systemd for a clean reboot."""
    subprocess.run(["systemctl", "reboot"], check=False, capture_output=True)
