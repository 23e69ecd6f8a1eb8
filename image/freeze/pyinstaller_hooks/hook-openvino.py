"""PyInstaller hook for OpenVINO (none ships with PyInstaller or its contrib hooks).

OpenVINO loads its model front ends and device plug-ins with ``dlopen`` by file name from
``openvino/libs``, so dependency analysis never sees them; without them the frozen program fails
with "Unable to read the model ... Available frontends". Which ones to bundle comes from the spec's
``hooksconfig={"openvino": {"frontends": [...], "plugins": [...]}}`` (see image/freeze/targets.py):
only the ONNX and IR front ends are needed on a device, and the plug-ins of its device families.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from PyInstaller.utils.hooks import get_hook_config, get_package_paths

# openvino.frontend.* Python packages import torch/tensorflow/jax lazily for conversion only.
excludedimports = ["torch", "tensorflow", "jax", "paddle", "openvino_telemetry"]


def hook(hook_api: Any) -> None:
    """Add the configured front-end and plug-in libraries as binaries into ``openvino/libs``."""
    frontends = get_hook_config(hook_api, "openvino", "frontends") or ["onnx", "ir"]
    plugins = get_hook_config(hook_api, "openvino", "plugins") or ["intel_cpu"]
    _, pkg_dir = get_package_paths("openvino")
    libs = os.path.join(pkg_dir, "libs")
    found: list[tuple[str, str]] = []
    for name in frontends:
        found += [
            (p, "openvino/libs") for p in glob.glob(f"{libs}/libopenvino_{name}_frontend.so*")
        ]
    for name in plugins:
        found += [(p, "openvino/libs") for p in glob.glob(f"{libs}/libopenvino_{name}_plugin.so")]
    wanted = len(frontends) + len(plugins)
    if len(found) < wanted:
        raise SystemExit(f"hook-openvino: found {found} in {libs}, expected {wanted} libraries")
    hook_api.add_binaries(found)
    if "intel_gpu" in plugins and os.path.exists(f"{libs}/cache.json"):
        # The GPU plug-in reads its kernel-tuning cache from beside itself.
        hook_api.add_datas([(f"{libs}/cache.json", "openvino/libs")])
