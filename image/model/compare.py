"""``kiln model compare OLD NEW``: A/B comparison of two model packages and a per-site gate.

Both packages run on the same runtime, on the same images (``--data`` or NEW's reference
split), in the same run: top-1, per-class confusion matrices and their change, latency p50/p95,
file size, and the shift of the predicted-class distribution (total variation distance and the
population stability index, PSI). The gate: NEW's top-1 may be at most ``max_accuracy_drop``
below OLD's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.inference.package import load_package
from image.errors import BuildError
from image.model.eval import Evaluation, evaluate

PSI_EPS = 1e-4


class CompareError(BuildError):
    """The two packages cannot be compared (different labels, no data)."""


class CompareFailedError(BuildError):
    """NEW is worse than OLD by more than the allowed accuracy drop."""

    exit_code = 3


@dataclass
class Side:
    """One package's figures."""

    package: str
    name: str
    version: str
    file: str
    top1: float
    p50_ms: float
    p95_ms: float
    size_bytes: int
    confusion: np.ndarray  # [true, predicted] counts
    distribution: np.ndarray  # fraction of predictions per class


@dataclass
class Comparison:
    """OLD vs NEW on one runtime and one data set."""

    labels: list[str]
    backend: str
    images: int
    old: Side
    new: Side
    agreement: float  # fraction of images where both predict the same class
    tvd: float  # total variation distance of the prediction distributions
    psi: float
    max_accuracy_drop: float
    passed: bool = True
    reasons: list[str] = field(default_factory=list)

    @property
    def confusion_delta(self) -> np.ndarray:
        return np.asarray(self.new.confusion - self.old.confusion)

    def per_class_recall(self, side: Side) -> np.ndarray:
        """Recall per class; NaN for a class with no image in the data (n/a, not 0)."""
        rows = side.confusion.sum(axis=1)
        nan = np.full(len(rows), np.nan)
        out = np.divide(np.diag(side.confusion), rows, out=nan, where=rows > 0)
        return np.asarray(out)

    def confusion_changes(self) -> list[tuple[int, int, int]]:
        """(true, predicted, NEW - OLD count) of every changed off-diagonal cell, largest first."""
        delta = self.confusion_delta
        np.fill_diagonal(delta, 0)
        t, p = np.nonzero(delta)
        order = sorted(zip(t, p, delta[t, p], strict=True), key=lambda x: (-abs(x[2]), x[0], x[1]))
        return [(int(a), int(b), int(d)) for a, b, d in order]


def _load_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise CompareError(f"{path}: cannot read images/labels: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or len(labels) != len(images):
        raise CompareError(
            f"{path}: expected images uint8 [N,H,W,3] and labels [N], "
            f"got {images.dtype} {images.shape} and {labels.shape}"
        )
    return images, labels.astype(np.int64)


def _side(ev: Evaluation, root: Path, n_classes: int) -> Side:
    pkg = load_package(root)
    conf = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(conf, (ev.labels, np.clip(ev.predictions, 0, n_classes - 1)), 1)
    dist = np.bincount(ev.predictions, minlength=n_classes)[:n_classes] / max(1, len(ev.labels))
    return Side(
        package=str(root),
        name=pkg.manifest.name,
        version=pkg.manifest.version,
        file=ev.file,
        top1=ev.top1,
        p50_ms=ev.p50_ms,
        p95_ms=ev.p95_ms,
        size_bytes=ev.size_bytes,
        confusion=conf,
        distribution=dist,
    )


def psi(old: np.ndarray, new: np.ndarray) -> float:
    """Population stability index of two class distributions (0: same; > 0.25: large shift)."""
    o, n = np.maximum(old, PSI_EPS), np.maximum(new, PSI_EPS)
    return float(np.sum((n - o) * np.log(n / o)))


def compare_packages(
    old: Path,
    new: Path,
    *,
    data: Path | None = None,
    backend: str = "onnxruntime",
    threads: int = 1,
    max_accuracy_drop: float = 0.01,
    timing_rounds: int = 2,
) -> Comparison:
    """Run both packages on ``backend`` over the same images and compare them."""
    pold, pnew = load_package(old), load_package(new)
    labels = pnew.manifest.labels
    if pold.manifest.labels != labels:
        raise CompareError(
            f"{old} and {new}: labels differ ({pold.manifest.labels} vs {labels}); "
            "a per-class comparison needs the same classes in the same order"
        )
    images, truth = _load_data(data) if data is not None else pnew.load_reference()
    if len(images) == 0:
        raise CompareError(f"{data or new}: no images to compare on")
    kw = {"threads": threads, "images": images, "labels": truth, "timing_rounds": timing_rounds}
    ev_old = evaluate(pold, backend, **kw)  # type: ignore[arg-type]
    ev_new = evaluate(pnew, backend, **kw)  # type: ignore[arg-type]
    k = len(labels)
    so, sn = _side(ev_old, old, k), _side(ev_new, new, k)
    cmp = Comparison(
        labels=list(labels),
        backend=backend,
        images=len(truth),
        old=so,
        new=sn,
        agreement=float(np.mean(ev_old.predictions == ev_new.predictions)),
        tvd=float(0.5 * np.abs(so.distribution - sn.distribution).sum()),
        psi=psi(so.distribution, sn.distribution),
        max_accuracy_drop=max_accuracy_drop,
    )
    drop = so.top1 - sn.top1
    if drop > max_accuracy_drop + 1e-9:
        cmp.passed = False
        cmp.reasons.append(
            f"NEW top-1 {sn.top1:.4f} is {drop * 100:.2f} pp below OLD {so.top1:.4f} "
            f"(allowed {max_accuracy_drop * 100:.2f} pp) on {len(truth)} images on {backend}"
        )
    return cmp


TOP = 10  # rows per section in the terminal; the report lists every class


def _pct(v: float) -> str:
    return "n/a" if np.isnan(v) else f"{v:.3f}"


def format_comparison(c: Comparison, top: int | None = TOP) -> str:
    """The comparison as text: summary first, then the ``top`` largest changes per section.

    ``top=None`` lists every class and every changed confusion cell (the report's full tables).
    """
    o, n = c.old, c.new
    speed, ratio = o.p50_ms / max(n.p50_ms, 1e-9), o.size_bytes / max(n.size_bytes, 1)
    rows = [
        ("top-1", f"{o.top1:.4f}", f"{n.top1:.4f}", f"{(n.top1 - o.top1) * 100:+.2f} pp"),
        ("infer p50 ms", f"{o.p50_ms:.3f}", f"{n.p50_ms:.3f}", f"{speed:.2f}x faster"),
        ("infer p95 ms", f"{o.p95_ms:.3f}", f"{n.p95_ms:.3f}", ""),
        (
            "size MB",
            f"{o.size_bytes / 1e6:.3f}",
            f"{n.size_bytes / 1e6:.3f}",
            f"{ratio:.2f}x smaller",
        ),
    ]
    k = len(c.labels)
    ro, rn = c.per_class_recall(o), c.per_class_recall(n)
    seen = int(np.sum(~np.isnan(ro)))
    lines = [
        f"OLD {o.name} {o.version} ({o.file})  vs  NEW {n.name} {n.version} ({n.file}) on "
        f"{c.backend}, {c.images} images",
        "gate: " + ("pass" if c.passed else "FAIL: " + "; ".join(c.reasons)),
        f"agreement {c.agreement * 100:.1f}%, distribution shift TVD {c.tvd:.3f}, PSI {c.psi:.3f}",
        f"classes: {k}, {seen} with images in the data (recall n/a for the other {k - seen})",
        f"{'':<22} {'OLD':>10} {'NEW':>10}  change",
    ]
    lines += [f"{a:<22} {b:>10} {d:>10}  {e}" for a, b, d, e in rows]
    recall = [i for i in range(k) if top is None or (not np.isnan(ro[i]) and rn[i] != ro[i])]
    if top is not None:
        recall = sorted(recall, key=lambda i: (-abs(rn[i] - ro[i]), i))[:top]
    lines.append(_heading("recall", len(recall), k, top))
    for i in recall:
        change = "" if np.isnan(ro[i]) else f"{(rn[i] - ro[i]) * 100:+.1f} pp"
        lines.append(f"  {c.labels[i][:20]:<20} {_pct(ro[i]):>10} {_pct(rn[i]):>10}  {change}")
    shift = np.abs(n.distribution - o.distribution)
    shares = [i for i in range(k) if top is None or shift[i] > 0]
    if top is not None:
        shares = sorted(shares, key=lambda i: (-shift[i], i))[:top]
    lines.append(_heading("predicted share", len(shares), k, top))
    for i in shares:
        lines.append(
            f"  {c.labels[i][:20]:<20} {o.distribution[i]:>10.3f} {n.distribution[i]:>10.3f}"
        )
    changes = c.confusion_changes()
    shown = changes if top is None else changes[:top]
    lines.append(
        "confusion changes"
        + (f" (largest {len(shown)} of {len(changes)})" if top is not None else "")
        + ": "
        + (", ".join(f"{c.labels[t]}->{c.labels[p]} {d:+d}" for t, p, d in shown) or "none")
    )
    return "\n".join(lines)


def _heading(what: str, shown: int, k: int, top: int | None) -> str:
    if top is None:
        return f"{what} per class (all {k}):"
    return f"{what}: the {shown} largest changes of {k} classes (every class in --report):"
