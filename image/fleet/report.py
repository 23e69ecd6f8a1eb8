"""``kiln fleet report``: one self-contained HTML page (inline SVG, no script, no CDN).

Charts: devices per version over time, per-site health (mean fps, windows with errors, alerts),
drift (PSI per window, the threshold line); tables: peer-anomaly flags and the inventory.
"""

from __future__ import annotations

import html
import time
from collections import defaultdict
from pathlib import Path

from appliance.fsutil import atomic_write_bytes
from image.fleet.inventory import inventory
from image.fleet.peers import anomalies
from image.fleet.store import Store

W, H, PAD = 640, 220, 40
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _esc(value: object) -> str:
    return html.escape(str(value))


def line_chart(
    title: str, series: dict[str, list[tuple[float, float]]], hline: float | None = None
) -> str:
    """An SVG line chart of ``{name: [(x, y), ...]}``; an optional horizontal reference line."""
    points = [p for s in series.values() for p in s]
    if not points:
        return (
            f'<svg class="chart" role="img" aria-label="{_esc(title)}" width="{W}" height="40">'
            f'<text x="4" y="24">{_esc(title)}: no data</text></svg>'
        )
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    ys = [p[1] for p in points] + ([hline] if hline is not None else [])
    y0, y1 = min(0.0, *ys), max(ys) or 1.0
    sx = (W - 2 * PAD) / ((x1 - x0) or 1.0)
    sy = (H - 2 * PAD) / ((y1 - y0) or 1.0)

    def xy(x: float, y: float) -> str:
        return f"{PAD + (x - x0) * sx:.1f},{H - PAD - (y - y0) * sy:.1f}"

    parts = [
        f'<svg class="chart" role="img" aria-label="{_esc(title)}" width="{W}" height="{H}" '
        f'viewBox="0 0 {W} {H}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{PAD}" y="16" font-weight="bold">{_esc(title)}</text>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#888"/>',
        f'<text x="4" y="{PAD + 4}" font-size="10">{y1:.3g}</text>',
        f'<text x="4" y="{H - PAD}" font-size="10">{y0:.3g}</text>',
    ]
    if hline is not None:
        parts.append(
            f'<polyline points="{xy(x0, hline)} {xy(x1, hline)}" stroke="#d62728" '
            'stroke-dasharray="4 3" fill="none"/>'
        )
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(xy(x, y) for x, y in sorted(pts))
        parts.append(f'<polyline class="series" points="{coords}" stroke="{color}" fill="none"/>')
        parts.append(
            f'<text x="{W - PAD + 4 - 120}" y="{PAD + 12 * i}" font-size="10" fill="{color}">'
            f"{_esc(name)[:24]}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, bars: dict[str, float]) -> str:
    """A horizontal SVG bar chart of ``{label: value}``."""
    height = PAD + 18 * max(len(bars), 1)
    top = max(bars.values(), default=0.0) or 1.0
    parts = [
        f'<svg class="chart" role="img" aria-label="{_esc(title)}" width="{W}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg"><text x="4" y="16" font-weight="bold">'
        f"{_esc(title)}</text>"
    ]
    for i, (label, value) in enumerate(sorted(bars.items())):
        y = 28 + 18 * i
        width = (W - 260) * value / top
        parts.append(
            f'<text x="4" y="{y + 11}" font-size="11">{_esc(label)[:28]}</text>'
            f'<rect class="bar" x="180" y="{y}" width="{width:.1f}" height="13" fill="#1f77b4"/>'
            f'<text x="{184 + width:.1f}" y="{y + 11}" font-size="11">{value:.3g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render(store: Store, *, since: float = 0.0, drift_threshold: float = 0.2) -> str:
    """The report page as a string."""
    rows = store.query(
        "SELECT device, site, version, ts_start, fps, error_rate, drift_psi FROM windows "
        "WHERE ts_start >= ? ORDER BY ts_start",
        (since,),
    )
    per_version: dict[str, dict[float, set[str]]] = defaultdict(lambda: defaultdict(set))
    site_fps: dict[str, list[float]] = defaultdict(list)
    site_err: dict[str, int] = defaultdict(int)
    drift: dict[str, list[tuple[float, float]]] = defaultdict(list)
    span = rows[-1][3] - rows[0][3] if rows else 0.0
    step = max(span / 48, 1.0)  # about 50 points across the period shown
    for device, site, version, start, fps, err, psi in rows:
        bucket = start - start % step
        per_version[str(version)][bucket].add(device)
        if fps is not None:
            site_fps[site].append(fps)
        site_err[site] += 1 if err else 0
        if psi is not None:
            drift[device].append((start, psi))
    versions = {v: [(t, float(len(d))) for t, d in b.items()] for v, b in per_version.items()}
    alerts = dict(store.query("SELECT site, COUNT(*) FROM events WHERE alert = 1 GROUP BY site"))
    drifted = {d: s for d, s in drift.items() if max(p for _, p in s) > drift_threshold}
    flags = anomalies(store, since=since)
    devices = inventory(store)
    flag_rows = "".join(
        f"<tr><td>{_esc(f.device)}</td><td>{_esc(f.site)}</td><td>{_esc(f.metric)}</td>"
        f"<td>{f.value:.4g}</td><td>{f.peer_median:.4g}</td><td>{f.z:+.1f}</td>"
        f"<td>{f.windows_marked}/{f.windows_seen}</td></tr>"
        for f in flags
    )
    inv_rows = "".join(
        f"<tr><td>{_esc(d.device)}</td><td>{_esc(d.site)}</td><td>{_esc(d.target)}</td>"
        f"<td>{_esc(d.version)}</td><td>{_esc(d.slot)}</td><td>{_esc(d.mode)}</td>"
        f"<td>{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(d.last_seen))}</td>"
        f"<td>{d.alerts}</td><td>{'yes' if d.drifted else ''}</td></tr>"
        for d in devices
    )
    return "\n".join(
        [
            "<!doctype html><html><head><meta charset='utf-8'><title>edgekiln fleet</title>",
            "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}</style></head><body>",
            f"<h1>edgekiln fleet</h1><p>{len(devices)} devices, {len(rows)} windows, "
            f"{len(flags)} anomaly flags, {len(drifted)} devices with drift; generated "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
            "<h2>Versions over time</h2>",
            line_chart("devices per version", versions),
            "<h2>Per-site health</h2>",
            bar_chart("mean fps", {s: sum(v) / len(v) for s, v in site_fps.items()}),
            bar_chart("windows with errors", {s: float(n) for s, n in site_err.items()}),
            bar_chart("alerts", {str(s): float(n) for s, n in alerts.items()}),
            "<h2>Drift</h2>",
            line_chart("prediction PSI (devices past the threshold)", drifted, drift_threshold),
            "<h2>Peer anomalies</h2><table id='anomalies'><tr><th>device</th><th>site</th>"
            "<th>metric</th><th>value</th><th>peer median</th><th>z</th><th>windows</th></tr>"
            + flag_rows
            + "</table>",
            "<h2>Inventory</h2><table id='inventory'><tr><th>device</th><th>site</th>"
            "<th>target</th><th>version</th><th>slot</th><th>mode</th><th>last seen</th>"
            "<th>alerts</th><th>drift</th></tr>" + inv_rows + "</table>",
            "</body></html>",
        ]
    )


def write(store: Store, out: Path, **kw: float) -> Path:
    atomic_write_bytes(out, render(store, **kw).encode())
    return out
