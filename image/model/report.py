"""HTML + PNG report of a model comparison (matplotlib, Agg back end, no display needed)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from image.model.compare import Comparison, format_comparison

OLD_C, NEW_C = "#8a8f98", "#1f77b4"


def _bars(ax: Any, title: str, old: float, new: float, fmt: str) -> None:
    bars = ax.bar(["OLD", "NEW"], [old, new], color=[OLD_C, NEW_C])
    ax.set_title(title)
    for b, v in zip(bars, (old, new), strict=True):
        ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    ax.margins(y=0.2)


def _summary_png(c: Comparison, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
    _bars(axes[0], "top-1 accuracy", c.old.top1, c.new.top1, "{:.3f}")
    _bars(axes[1], "infer p50 (ms)", c.old.p50_ms, c.new.p50_ms, "{:.3f}")
    _bars(axes[2], "infer p95 (ms)", c.old.p95_ms, c.new.p95_ms, "{:.3f}")
    _bars(axes[3], "model size (MB)", c.old.size_bytes / 1e6, c.new.size_bytes / 1e6, "{:.3f}")
    fig.suptitle(f"{c.old.name} {c.old.version}  vs  {c.new.name} {c.new.version} on {c.backend}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


MATRIX_MAX = 12  # classes up to which the full confusion matrices stay readable
TOP_N = 20  # bars in the charts beyond that


def _confusion_png(c: Comparison, path: Path) -> None:
    if len(c.labels) > MATRIX_MAX:
        _top_confusions_png(c, path)
        return
    import matplotlib.pyplot as plt

    k = len(c.labels)
    fig, axes = plt.subplots(1, 3, figsize=(4 * 3 + 1, 4.2))
    delta = c.confusion_delta
    lim = max(1, int(np.abs(delta).max()))
    panels = [
        ("OLD", c.old.confusion, "Blues", 0, None),
        ("NEW", c.new.confusion, "Blues", 0, None),
        ("NEW - OLD", delta, "RdBu_r", -lim, lim),
    ]
    for ax, (title, m, cmap, vmin, vmax) in zip(axes, panels, strict=True):
        ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(title)
        ax.set_xticks(range(k), c.labels, rotation=45, ha="right")
        ax.set_yticks(range(k), c.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        dark = 0.6 * max(1, int(np.abs(m).max()))
        for t in range(k):
            for p in range(k):
                text = f"{m[t, p]:+d}" if title == "NEW - OLD" else str(m[t, p])
                colour = "white" if abs(m[t, p]) > dark else "black"
                ax.text(p, t, text, ha="center", va="center", fontsize=9, color=colour)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _top_confusions_png(c: Comparison, path: Path) -> None:
    """Many classes: the TOP_N most frequent confusions (true -> predicted), OLD beside NEW."""
    import matplotlib.pyplot as plt

    both = c.old.confusion + c.new.confusion
    np.fill_diagonal(both, 0)
    flat = np.argsort(-both, axis=None, kind="stable")[:TOP_N]
    pairs = [divmod(int(i), len(c.labels)) for i in flat if both.flat[i] > 0]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * max(1, len(pairs))))
    y = np.arange(len(pairs))
    names = [f"{c.labels[t][:18]} -> {c.labels[p][:18]}" for t, p in pairs]
    ax.barh(y - 0.2, [c.old.confusion[t, p] for t, p in pairs], 0.4, label="OLD", color=OLD_C)
    ax.barh(y + 0.2, [c.new.confusion[t, p] for t, p in pairs], 0.4, label="NEW", color=NEW_C)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.set_title(
        f"the {len(pairs)} most frequent confusions of {len(c.labels)} classes (true -> predicted)"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _distribution_png(c: Comparison, path: Path) -> None:
    import matplotlib.pyplot as plt

    k = len(c.labels)
    shown = np.arange(k)
    title = f"prediction distribution (TVD {c.tvd:.3f}, PSI {c.psi:.3f})"
    if k > TOP_N:  # only the classes whose share moved most, with readable labels
        shift = np.abs(c.new.distribution - c.old.distribution)
        shown = np.argsort(-shift, kind="stable")[:TOP_N]
        title = f"the {len(shown)} of {k} classes whose share changed most (TVD {c.tvd:.3f})"
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * len(shown)), 3.8))
    ax.bar(x - 0.2, c.old.distribution[shown], 0.4, label="OLD", color=OLD_C)
    ax.bar(x + 0.2, c.new.distribution[shown], 0.4, label="NEW", color=NEW_C)
    ax.set_xticks(x, [c.labels[i][:14] for i in shown], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("fraction of predictions")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(c: Comparison, out_dir: Path) -> Path:
    """Write ``report.html`` and its PNG charts into ``out_dir``; return the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "summary.png": _summary_png,
        "confusion.png": _confusion_png,
        "distribution.png": _distribution_png,
    }
    for name, draw in charts.items():
        draw(c, out_dir / name)
    verdict = "PASS" if c.passed else "FAIL"
    colour = "#1a7f37" if c.passed else "#cf222e"
    body = [
        "<!doctype html><meta charset='utf-8'><title>model comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
        "pre{background:#f6f8fa;padding:1em}img{max-width:100%}</style>",
        f"<h1>{html.escape(c.old.name)} {html.escape(c.old.version)} → "
        f"{html.escape(c.new.name)} {html.escape(c.new.version)}</h1>",
        f"<p style='font-size:1.4em;color:{colour}'><b>{verdict}</b> "
        f"{html.escape('; '.join(c.reasons))}</p>",
        "<img src='summary.png' alt='accuracy, latency, size'>",
        "<img src='confusion.png' alt='confusion matrices'>",
        "<img src='distribution.png' alt='prediction distribution'>",
        f"<pre>{html.escape(format_comparison(c, top=None))}</pre>",
    ]
    path = out_dir / "report.html"
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path
