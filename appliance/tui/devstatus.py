"""What the Status screen shows, gathered from the device's files (no Textual here).

Sources: device.json and device-id (identity), the slot loader and update-state file (slots,
version), the tail of the pipeline's results sink (model, back end, FPS, latency; the agent
appends to it continuously), events.jsonl (fallback/degraded and why), sysfs thermal zones,
statvfs of the data partition. Every probe degrades to "-" with a reason rather than failing
the whole screen.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from pathlib import Path
from typing import Any

from appliance.device import Device
from appliance.errors import ApplianceError

TAIL_BYTES = 256 * 1024
FPS_WINDOW = 30
STALE_S = 10.0
MODE_EVENTS = ("loaded", "fallback", "degraded", "recovered")


@dataclasses.dataclass(frozen=True)
class DeviceStatus:
    """One snapshot of the device, already formatted where a unit matters."""

    device_id: str
    product: str
    target: str
    version: str
    booted: str
    committed: str
    next_boot: str
    health: str
    model: str
    backend: str
    mode: str  # primary / fallback / degraded / no frames
    mode_reason: str
    fps: float | None
    latency_p50_ms: float | None
    latency_budget_ms: float | None
    temperature_c: float | None
    disk_used: int | None
    disk_total: int | None
    telemetry_backlog: str
    selftest: str = "never run from this console"


def last_selftest(device: Device) -> str:
    """The kept self-test report (Model check screen) in one line."""
    try:
        doc = json.loads((device.state_dir / "tui" / "selftest-last.json").read_bytes())
        verdict = "[OK] passed" if doc["passed"] else "[!!] FAILED"
        return f"{verdict} {doc['when']}, top-1 {doc['top1']:.4f}"
    except (OSError, ValueError, KeyError, TypeError):
        return "never run from this console"


def tail_records(path: Path, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The JSON objects in the last ``max_bytes`` of a JSON-lines file (torn lines skipped)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    out = []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut
    for raw in lines:
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def pipeline_settings(device: Device) -> dict[str, Any]:
    """The agent's pipeline.json as a dict ({} when absent or unreadable)."""
    try:
        data = json.loads(device.pipeline_config.read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _budget_total(model_dir: str | None, factor: float) -> float | None:
    """budget_ms.total of the configured model (display only: the self-test validates it).

    Read as plain JSON so the first paint does not wait for numpy and the package parser.
    """
    if not model_dir:
        return None
    try:
        doc = json.loads((Path(model_dir) / "model.json").read_bytes())
        return float(doc["budget_ms"]["total"]) * factor
    except (OSError, ValueError, KeyError, TypeError):
        return None


def temperature(device: Device) -> float | None:
    """The hottest thermal zone, in degrees Celsius."""
    temps = []
    pattern = str(device.sys_path("/sys/class/thermal")) + "/thermal_zone*/temp"
    for name in glob.glob(pattern):
        try:
            temps.append(int(Path(name).read_text().strip()) / 1000)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


def _slots(device: Device) -> tuple[str, str, str, str, str]:
    """booted, committed, next boot, health text, version."""
    from appliance.slots.state import loader_choice
    from appliance.state import load_state

    version = device.config.version
    try:
        booted: str = device.booted()
    except ApplianceError:
        booted = "?"
    try:
        state = device.loader().read()
    except ApplianceError as exc:
        return booted, "?", "?", f"slot state unreadable: {exc}", version
    try:
        record = load_state(device.data_dir)
        for rec in (record.committed, record.installed):
            if rec is not None and rec.slot == booted:
                version = rec.version
    except ApplianceError:
        pass
    if booted == state.committed:
        health = "ok: running the committed slot"
    elif booted == state.trying:
        health = "on trial: the health gate has not committed this slot yet"
    else:
        health = f"slot {booted} is neither committed nor on trial"
    return booted, state.committed, loader_choice(state)[0], health, version


def _mode(events: list[dict[str, Any]], results: list[dict[str, Any]]) -> tuple[str, str]:
    for event in reversed(events):
        kind = event.get("kind")
        if kind in MODE_EVENTS:
            reason = str(event.get("reason") or event.get("detail") or "")
            if kind in ("loaded", "recovered"):
                return "primary", reason
            return str(kind), reason
    if results and results[-1].get("degraded"):
        last = results[-1]
        return "degraded", str(last.get("reason") or last.get("error") or "")
    return "primary", ""


def collect_status(device: Device, now: float) -> DeviceStatus:
    """Read every source once; ``now`` is the wall clock (injected so tests are exact)."""
    cfg = pipeline_settings(device)
    sink = cfg.get("sink")
    records = tail_records(Path(sink)) if isinstance(sink, str) else []
    results = [r for r in records if r.get("type") == "result"]
    events = [r for r in tail_records(device.events_path) if "kind" in r]
    events += [r for r in records if r.get("type") == "event"]
    events.sort(key=lambda r: float(r.get("ts", 0) or 0))
    booted, committed, next_boot, health, version = _slots(device)
    mode, reason = _mode(events, results)
    last = results[-1] if results else {}
    fps = p50 = None
    window = results[-FPS_WINDOW:]
    if window and now - float(window[-1].get("ts", 0)) > STALE_S:
        mode, reason = "no frames", f"no result for {now - float(window[-1]['ts']):.0f} s"
    elif len(window) >= 2:
        span = float(window[-1]["ts"]) - float(window[0]["ts"])
        fps = (len(window) - 1) / span if span > 0 else None
        totals = sorted(float(sum(r.get("ms", {}).values())) for r in window)
        p50 = totals[len(totals) // 2]
    elif not window:
        mode, reason = "no frames", "the pipeline has written no results yet"
    factor = float(cfg.get("budget_factor", 1.0) or 1.0)
    used: int | None = None
    total: int | None = None
    try:
        usage = shutil.disk_usage(device.data_dir)
        used, total = usage.used, usage.total
    except OSError:
        pass
    telemetry = device.state_dir / "telemetry"
    backlog = (
        f"{sum(1 for _ in telemetry.rglob('*') if _.is_file())} files queued"
        if telemetry.is_dir()
        else "none (no telemetry store on data)"
    )
    return DeviceStatus(
        device_id=device.device_id(),
        product=device.config.product,
        target=device.config.target,
        version=version,
        booted=booted,
        committed=committed,
        next_boot=next_boot,
        health=health,
        model=f"{last.get('model', '-')} {last.get('version', '')}".strip(),
        backend=str(last.get("backend", "-")),
        mode=mode,
        mode_reason=reason,
        fps=fps,
        latency_p50_ms=p50,
        latency_budget_ms=_budget_total(cfg.get("model"), factor),
        temperature_c=temperature(device),
        disk_used=used,
        disk_total=total,
        telemetry_backlog=backlog,
        selftest=last_selftest(device),
    )


def human_bytes(n: int | None) -> str:
    """1.2 GiB style."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"
