"""Evaluate one model file of a package on one runtime: predictions, top-1, latency, size.

The model runs through the device's own code path (``appliance.inference`` back ends,
``Preprocessor`` and ``Postprocessor``), so the figures are what the device will see. Latency is
the ``infer`` stage only (batch 1, one image at a time), after the back end's warm-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.inference.backends import BackendOptions, get_backend
from appliance.inference.errors import InferenceError
from appliance.inference.package import ModelPackage
from appliance.inference.postprocess import Postprocessor
from appliance.inference.preprocess import Preprocessor
from image.errors import BuildError


class EvaluationError(BuildError):
    """A variant could not be loaded or run on its runtime."""


@dataclass
class Evaluation:
    """What one (file, runtime, options) triple did on the reference split."""

    file: str
    backend: str
    device: str
    threads: int
    predictions: np.ndarray
    labels: np.ndarray
    infer_ms: list[float] = field(default_factory=list)
    size_bytes: int = 0

    @property
    def top1(self) -> float:
        return float(np.mean(self.predictions == self.labels)) if len(self.labels) else 0.0

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.infer_ms, 50)) if self.infer_ms else 0.0

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.infer_ms, 95)) if self.infer_ms else 0.0


def file_size(package: ModelPackage, path: str) -> int:
    """Bytes of a model file, plus its weights file for an OpenVINO IR (``.xml`` + ``.bin``)."""
    p = package.root / path
    size = p.stat().st_size
    if p.suffix == ".xml" and p.with_suffix(".bin").exists():
        size += p.with_suffix(".bin").stat().st_size
    return size


def evaluate(
    package: ModelPackage,
    backend: str,
    *,
    file: str | None = None,
    threads: int = 1,
    precision_f32: bool = True,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    timing_rounds: int = 1,
) -> Evaluation:
    """Run the reference split (or ``images``/``labels``) through ``file`` on ``backend``.

    ``timing_rounds`` > 1 repeats the timed pass over the split (predictions come from the
    first); more samples make p50/p95 steadier on a shared machine.
    """
    if images is None or labels is None:
        images, labels = package.load_reference()
    options = BackendOptions(threads=threads, precision_f32=precision_f32)
    try:
        model = get_backend(backend).load(package, file, options)
    except InferenceError as exc:
        raise EvaluationError(
            f"{package.root}: {file or 'default file'} on {backend}: {exc}"
        ) from exc
    try:
        pre, post = Preprocessor.for_model(model), Postprocessor(model)
        batches = [pre(img, "RGB")[0] for img in images]
        preds = np.empty(len(batches), np.int64)
        infer_ms: list[float] = []
        for r in range(max(1, timing_rounds)):
            for i, x in enumerate(batches):
                t0 = time.perf_counter()
                raw = model.run(x)
                infer_ms.append((time.perf_counter() - t0) * 1000)
                if r == 0:
                    preds[i] = post.best(raw)
        return Evaluation(
            file=model.file.path,
            backend=backend,
            device=model.device,
            threads=threads,
            predictions=preds,
            labels=np.asarray(labels, np.int64),
            infer_ms=infer_ms,
            size_bytes=file_size(package, model.file.path),
        )
    except InferenceError as exc:
        raise EvaluationError(f"{package.root}/{model.file.path} on {backend}: {exc}") from exc
    except (ValueError, IndexError, TypeError) as exc:  # outputs the runtime got wrong
        raise EvaluationError(
            f"{package.root}/{model.file.path} on {backend}: its outputs cannot be read "
            f"({type(exc).__name__}: {exc}); {model.describe()}"
        ) from exc
    finally:
        model.close()


def load_split(path: Path) -> np.ndarray:
    """Images uint8 [N,H,W,3] from an ``.npz`` (key ``images``), as the package format writes."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz["images"]
    except (OSError, KeyError, ValueError) as exc:
        raise BuildError(f"{path}: cannot read an images split: {exc}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise BuildError(
            f"{path}: images: expected uint8 [N,H,W,3], got {images.dtype} {images.shape}"
        )
    return np.asarray(images)
