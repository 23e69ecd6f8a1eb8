"""Back-end registry: name -> ``module:Class``, imported on demand, ImportError tolerated.

Like Frigate's detector plug-ins: one small interface (:class:`~.base.Backend`), each back end
in its own module, and a missing library only makes that back end unavailable (with the reason)
instead of breaking the runtime. ``available()`` reports every back end's state.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from appliance.inference.backends.base import Backend, BackendOptions, LoadedModel, TensorInfo
from appliance.inference.errors import BackendUnavailableError, InferenceError
from appliance.inference.package import ModelPackage

log = logging.getLogger(__name__)

REGISTRY: dict[str, str] = {
    "onnxruntime": "appliance.inference.backends.ort:OnnxRuntimeBackend",
    "openvino": "appliance.inference.backends.openvino:OpenVinoBackend",
    "litert": "appliance.inference.backends.litert:LiteRtBackend",
    "tensorrt": "appliance.inference.backends.tensorrt:TensorRtBackend",
    "opencv": "appliance.inference.backends.opencv:OpenCvBackend",
}
DEFAULT_ORDER = ("onnxruntime", "openvino", "litert", "tensorrt", "opencv")
# Back ends that run a fused ONNX file (pre-processing and top-k in the graph, uint8 input).
FUSED_BACKENDS = ("onnxruntime", "openvino", "opencv")
BACKEND_NAMES = tuple(REGISTRY)

__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_ORDER",
    "REGISTRY",
    "Backend",
    "BackendOptions",
    "BackendStatus",
    "LoadedModel",
    "TensorInfo",
    "available",
    "get_backend",
    "load_model",
]


def get_backend(name: str) -> Backend:
    """Instantiate a back end by name; unknown names and import failures raise named errors."""
    if name not in REGISTRY:
        raise InferenceError(f"unknown back end {name!r}; choose one of {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"back end {name}: cannot import {module_name}: {exc}"
        ) from None
    backend: Backend = getattr(module, cls_name)()
    return backend


@dataclass(frozen=True)
class BackendStatus:
    """Whether a back end can run here, its library version, or why not."""

    name: str
    ok: bool
    detail: str


def available() -> list[BackendStatus]:
    """Probe every registered back end (imports each library once)."""
    out = []
    for name in REGISTRY:
        try:
            version = get_backend(name).probe()
            out.append(BackendStatus(name, True, version))
        except InferenceError as exc:
            out.append(BackendStatus(name, False, str(exc)))
    return out


def load_model(
    backend: Backend,
    package: ModelPackage,
    path: str | None = None,
    options: BackendOptions | None = None,
    top: int = 1,
    on_skip: Callable[[str], None] | None = None,
    skip: str | None = None,
) -> LoadedModel:
    """Load what the pipeline runs: the fused variant of the chosen file when one fits, else it.

    A file named by ``path`` is loaded as it is. Otherwise an accelerator's file
    (:meth:`Backend.accelerated_file`: LiteRT's Edge TPU file) is tried first; when it does not
    load (no accelerator, its delegate fails) ``on_skip`` hears why and the back end's own pick
    runs. On a back end that runs fused files,
    the fused variant (image/model/fuse.py) of the file the back end picks is tried first, if it
    keeps at least ``top`` classes (or all of them); a fused file that fails to load is logged,
    reported to ``on_skip`` and skipped.
    """
    fast = backend.accelerated_file(package) if path is None else None
    if fast is not None and fast.path != skip:  # ``skip``: an earlier step tried it already
        try:
            return backend.load(package, fast.path, options)
        except BackendUnavailableError:
            raise
        except InferenceError as exc:
            why = f"{fast.path} not used ({exc}); running {backend.choose_file(package).path}"
            log.warning("%s: %s", package.root, why)
            if on_skip is not None:
                on_skip(why)
    if path is None and backend.name in FUSED_BACKENDS:
        plain = backend.choose_file(package, None)
        fused = package.fused_for(plain)
        m = package.manifest
        # A classifier's fused top-k holds at most every class: enough for any larger ``top``.
        need = min(top, len(m.labels)) if m.task == "classification" else 0
        if fused is not None and fused.fused and fused.fused.top_k >= need:
            try:
                return backend.load(package, fused.path, options)
            except InferenceError as exc:
                why = f"fused file {fused.path} not used ({exc}); loading {plain.path}"
                log.warning("%s: %s", package.root, why)
                if on_skip is not None:
                    on_skip(why)
            return backend.load(package, plain.path, options)
    return backend.load(package, path, options)
