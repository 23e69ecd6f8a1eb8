"""The config files the image gives the device: device.json and telemetry.json on the slot,
pipeline.json on data.

``/etc/edgekiln/device.json`` says what the image is (product, version, ``security_version``,
target, loader, health settings, model paths); it is part of the signed slot, as is
``/etc/edgekiln/telemetry.json`` (the recipe's ``[telemetry]``: it travels with every update,
appliance/telemetry/settings.py). The agent's first ``/data/edgekiln/pipeline.json`` (source,
back ends, sink) is on data, where a technician may change it later.
"""

from __future__ import annotations

import json

from appliance.telemetry.provision import broker_address
from image.build import rootfs
from image.freeze.targets import recipe_spec
from image.recipe import LoadedRecipe


def pipeline_config(loaded: LoadedRecipe) -> bytes:
    """The agent's first ``/data/edgekiln/pipeline.json`` (a technician may change it later)."""
    r = loaded.recipe
    # Every back end the frozen runtime carries, its own first: OpenCV DNN (the last resort)
    # only when the recipe bundles it (``[runtime] extras = ["opencv"]``).
    backends = list(recipe_spec(loaded).backends)
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


def telemetry_config(loaded: LoadedRecipe) -> bytes:
    """``/etc/edgekiln/telemetry.json``: the recipe's layer of the telemetry settings.

    Written also without a broker (``{"format": 1}``): then pipeline.json's blocks, a flash-time
    copy on older devices, are not read either and telemetry stays off unless the device's own
    layer on data (provisioning, TUI) names a broker.
    """
    doc = {"format": 1, **telemetry_blocks(loaded)}
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"


def telemetry_blocks(loaded: LoadedRecipe) -> dict[str, object]:
    """The ``mqtt`` and ``telemetry`` blocks from the recipe's ``[telemetry]``; {} without broker.

    Device id and site are left empty: the device reads them from data (docs/decisions.md §18).
    The buffer path is relative to the data partition's mount point.
    """
    t = loaded.recipe.telemetry
    if not t.broker:
        return {}
    host, port, tls = broker_address(t.broker)
    mqtt: dict[str, object] = {
        "host": host,
        "port": port,
        "topic": t.topic_prefix,
        "buffer_dir": "edgekiln/mqtt-buffer",
    }
    if tls:
        mqtt["ca_file"] = t.ca_file
    telemetry = {
        "window_s": t.window_s,
        "topic_prefix": t.topic_prefix,
        "target": loaded.recipe.target.name,
        "results": t.results,
        "results_per_min": t.results_per_min,
        "budget_mb_day": t.budget_mb_day,
        "drift_psi": t.drift_psi,
        "drift_min_samples": t.drift_min_samples,
        "drift_windows": t.drift_windows,
    }
    return {"mqtt": mqtt, "telemetry": telemetry}


def device_config(loaded: LoadedRecipe) -> bytes:
    """``/etc/edgekiln/device.json``: what the device needs to know about its image."""
    r = loaded.recipe
    spec = recipe_spec(loaded)
    doc = {
        "format": 1,
        "product": r.product,
        "version": r.version,
        "security_version": r.security_version,
        "target": r.target.name,
        "arch": r.target.arch,
        "backend": r.target.backend,
        "loader": r.target.loader,
        # What the frozen runtime can load (``kiln inspect`` shows it): back ends, own first.
        "runtime": {"backends": list(spec.backends), "extras": list(spec.extras)},
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


def update_config(loaded: LoadedRecipe) -> tuple[bytes, bytes] | None:
    """``/etc/edgekiln/update.json`` and the channel's TUF root, or None (no ``[update]``).

    The agent (appliance/ota/agent_config.py) reads update.json; the root.json is the trust
    anchor baked into the slot (TUF rotates it on the device afterwards, on data).
    """
    from image.recipe.update_checks import bandwidth_bytes

    u = loaded.recipe.update
    if not u.channels or not u.tuf_root:
        return None
    doc = {
        "channels": list(u.channels),
        "tuf_root": "/etc/edgekiln/tuf-root.json",
        "poll_interval_s": u.poll_interval_s,
        "poll_jitter_s": u.poll_jitter_s,
        "window": u.window,
        "rate": bandwidth_bytes(u.bandwidth_cap),
        "metered": u.metered,
        "reboot": u.reboot,
        "max_bundle_bytes": u.max_bundle_mib << 20,
    }
    root = loaded.resolve(u.tuf_root).read_bytes()
    return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n", root
