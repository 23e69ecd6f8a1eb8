"""The two config files the image gives the device: device.json on the slot, pipeline.json on data.

``/etc/edgekiln/device.json`` says what the image is (product, version, ``security_version``,
target, loader, health settings, model paths); it is part of the signed slot. The agent's first
``/data/edgekiln/pipeline.json`` (source, back ends, sink) is on data, where a technician may
change it later.
"""

from __future__ import annotations

import json

from image.build import rootfs
from image.recipe import LoadedRecipe


def pipeline_config(loaded: LoadedRecipe) -> bytes:
    """The agent's first ``/data/edgekiln/pipeline.json`` (a technician may change it later)."""
    r = loaded.recipe
    backends: list[str] = [r.target.backend, "opencv"]  # OpenCV DNN: the last resort
    doc = {
        "model": f"/{rootfs.MODELS_DIR}/primary",
        "fallback_model": f"/{rootfs.MODELS_DIR}/fallback",
        "source": r.pipeline.source,
        "backends": backends,
        "sink": "/data/edgekiln/results.jsonl",
        "threads": r.pipeline.threads,
        "budget_factor": r.health.budget_factor,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def device_config(loaded: LoadedRecipe) -> bytes:
    """``/etc/edgekiln/device.json``: what the device needs to know about its image."""
    r = loaded.recipe
    doc = {
        "format": 1,
        "product": r.product,
        "version": r.version,
        "security_version": r.security_version,
        "target": r.target.name,
        "arch": r.target.arch,
        "backend": r.target.backend,
        "loader": r.target.loader,
        "health": {
            "budget_factor": r.health.budget_factor,
            "reference_count": r.health.reference_count,
        },
        "models": {
            "primary": f"/{rootfs.MODELS_DIR}/primary",
            "fallback": f"/{rootfs.MODELS_DIR}/fallback",
        },
        "data_dir": "/data",
        "recipe_digest": loaded.digest,
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
