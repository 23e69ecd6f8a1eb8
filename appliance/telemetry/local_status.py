"""The latest window's figures on data, for the technician's console (the TUI Status screen).

``DATA/edgekiln/telemetry-status.json``, replaced once per window by the telemetry sink:
window end, frames, the model, and its drift reading (PSI, threshold, pooled samples) with the
drift alert's reason while the drift lasts. The TUI reads it; nothing else does. Replaced by
rename (a reader never sees half a file) but not fsynced: it is a display of the last minute,
rewritten a minute later, and a power cut that loses it loses nothing (no flash wear, no
I/O wait on the frame path's thread).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
STATUS = "edgekiln/telemetry-status.json"


def write_status(data_dir: Path, doc: dict[str, Any]) -> None:
    """Replace the status file; a full or read-only data partition only logs."""
    path = Path(data_dir) / STATUS
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(json.dumps(doc, sort_keys=True, default=str).encode() + b"\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("telemetry: cannot write %s: %s", path, exc)


def read_status(data_dir: Path) -> dict[str, Any] | None:
    """The last window's status, or None (no telemetry running, or the file is unreadable)."""
    try:
        doc = json.loads((Path(data_dir) / STATUS).read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def drift_line(doc: dict[str, Any] | None, now: float) -> str:
    """One line for the Status screen: PSI against the threshold and the samples behind it."""
    if doc is None:
        return "- (no telemetry window yet)"
    drift = doc.get("drift")
    age = max(0.0, now - float(doc.get("ts", now)))
    when = f"{age:.0f} s ago" if age < 3600 else f"{age / 3600:.1f} h ago"
    if not isinstance(drift, dict):
        return f"- (model {doc.get('model') or '?'} has no reference histogram; window {when})"
    psi, threshold = drift.get("psi"), drift.get("threshold")
    samples, needed = drift.get("samples", 0), doc.get("min_samples")
    if psi is None:
        wait = f" of {needed}" if needed else ""
        return f"waiting for samples: {samples}{wait} (threshold {threshold}; window {when})"
    state = "[!!] DRIFT" if drift.get("drifted") else "[OK]"
    line = f"{state} PSI {psi:.3f} / threshold {threshold:g}, {samples} samples ({when})"
    reason = doc.get("drift_reason")
    return f"{line}\n{'':<10} {reason}" if drift.get("drifted") and reason else line
