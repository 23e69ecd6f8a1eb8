"""What a recipe must satisfy beyond its types: identity, settings, models, sizes on disk.

Each check raises :class:`~image.recipe.schema.RecipeError` naming the file that set the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from appliance.telemetry.provision import broker_address
from image.recipe.schema import (
    BOOT_MIN_MIB,
    BUILDABLE_ARCHES,
    DATA_MIN_MIB,
    MAX_BUDGET_FACTOR,
    MIB,
    RUNTIME_EXTRAS_MIB,
    TARGETS,
    LoadedRecipe,
    RecipeError,
    origin_of,
)
from image.recipe.update_checks import check_update

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$")
_PRODUCT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _fail(loaded: LoadedRecipe, dotted: str, message: str) -> RecipeError:
    return RecipeError(origin_of(loaded.provenance, dotted, loaded.path), dotted, message)


def check(loaded: LoadedRecipe, *, check_files: bool) -> None:
    """Every check, in order; the first failure raises."""
    _check_identity(loaded)
    _check_settings(loaded)
    _check_lan(loaded)
    _check_models(loaded)
    _check_pipeline(loaded)
    _check_telemetry(loaded)
    _check_sizes(loaded, check_files=check_files)
    check_update(loaded, _fail, check_files=check_files)


def _check_identity(loaded: LoadedRecipe) -> None:
    r = loaded.recipe
    if not _PRODUCT_RE.match(r.product):
        raise _fail(loaded, "product", f"{r.product!r} must be lowercase letters, digits and '-'")
    if not _VERSION_RE.match(r.version):
        raise _fail(loaded, "version", f"{r.version!r} is not a version like 1.2.3 or 1.2.3-rc1")
    if r.security_version < 0:
        raise _fail(loaded, "security_version", "must be >= 0")
    spec = TARGETS.get(r.target.name)
    if spec is None:
        known = ", ".join(sorted(TARGETS))
        raise _fail(loaded, "target.name", f"unknown target {r.target.name!r}; known: {known}")
    for attr, allowed in (
        ("arch", (spec.arch,)),
        ("backend", spec.backends),
        ("loader", (spec.loader,)),
    ):
        value = getattr(r.target, attr)
        if value not in allowed:
            raise _fail(
                loaded,
                f"target.{attr}",
                f"{value!r} does not fit target {r.target.name!r} (use {' or '.join(allowed)})",
            )


def _check_lan(loaded: LoadedRecipe) -> None:
    lan = loaded.recipe.lan
    if not 1 <= lan.port <= 65535:
        raise _fail(loaded, "lan.port", "must be a TCP port (1-65535)")
    if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", lan.interface):
        raise _fail(loaded, "lan.interface", "must be an interface name (e.g. eth0) or 'auto'")


def _check_settings(loaded: LoadedRecipe) -> None:
    r = loaded.recipe
    # QEMU TCG needs hundreds (recipes/qemu-x86-64.toml); above the cap it is a typo
    if not 0.1 <= r.health.budget_factor <= MAX_BUDGET_FACTOR:
        raise _fail(
            loaded, "health.budget_factor", f"must be between 0.1 and {MAX_BUDGET_FACTOR:g}"
        )
    if r.health.reference_count < 1:
        raise _fail(loaded, "health.reference_count", "must be >= 1")
    if not 1 <= r.agent.watchdog_sec <= 3600:
        raise _fail(loaded, "agent.watchdog_sec", "must be between 1 and 3600 seconds")
    if not 0 <= r.agent.runtime_watchdog_sec <= 600:
        raise _fail(loaded, "agent.runtime_watchdog_sec", "must be between 0 (off) and 600 seconds")
    if r.partitions.boot_mib < BOOT_MIN_MIB:
        raise _fail(
            loaded,
            "partitions.boot_mib",
            f"{r.partitions.boot_mib} MiB is below the minimum {BOOT_MIN_MIB}",
        )
    if r.partitions.data_mib < DATA_MIN_MIB:
        raise _fail(
            loaded,
            "partitions.data_mib",
            f"{r.partitions.data_mib} MiB is below the minimum {DATA_MIN_MIB}",
        )
    if not r.rootfs.tarball and not (r.rootfs.packages or r.rootfs.extra_packages):
        raise _fail(loaded, "rootfs.packages", "empty: name the packages of the base system")
    for list_name in ("packages", "extra_packages"):
        for pkg in getattr(r.rootfs, list_name):
            if not re.match(r"^[a-z0-9][a-z0-9+.-]+$", pkg):
                raise _fail(loaded, f"rootfs.{list_name}", f"{pkg!r} is not a Debian package name")
    if r.kernel.cmdline and any(c in r.kernel.cmdline for c in "\n\"';$`\\"):
        raise _fail(
            loaded, "kernel.cmdline", "must not contain quotes, '$', ';', '`', '\\' or newlines"
        )


MAX_ACCURACY_DROP_PP = 50.0
_OPTIMISE_OPTIONS = ("max_accuracy_drop", "select")


def _check_models(loaded: LoadedRecipe) -> None:
    m = loaded.recipe.models
    if not 0.0 <= m.max_accuracy_drop <= MAX_ACCURACY_DROP_PP:
        raise _fail(
            loaded,
            "models.max_accuracy_drop",
            f"{m.max_accuracy_drop} is not a top-1 drop in percentage points between 0 and "
            f"{MAX_ACCURACY_DROP_PP:g} (1.0 means one point, e.g. 96.5 % -> 95.5 %)",
        )
    # Options without optimisation are a mistake, unless a file turned a base's optimisation off.
    if not m.optimise and "models.optimise" not in loaded.provenance:
        for name in _OPTIMISE_OPTIONS:
            if f"models.{name}" in loaded.provenance:
                raise _fail(
                    loaded,
                    f"models.{name}",
                    "has no effect without models.optimise = true; set that or remove this",
                )


def _check_pipeline(loaded: LoadedRecipe) -> None:
    p = loaded.recipe.pipeline
    if not p.source or any(c in p.source for c in "\n\0"):
        raise _fail(
            loaded, "pipeline.source", "must be a frame-source URI, e.g. v4l2:///dev/video0"
        )
    if not 1 <= p.threads <= 64:
        raise _fail(loaded, "pipeline.threads", "must be between 1 and 64")


def _check_telemetry(loaded: LoadedRecipe) -> None:
    t = loaded.recipe.telemetry
    if t.broker:
        try:
            _host, _port, tls = broker_address(t.broker)
        except ValueError as exc:
            raise _fail(loaded, "telemetry.broker", str(exc)) from None
        if bool(t.ca_file) != tls:
            raise _fail(
                loaded,
                "telemetry.ca_file",
                "an mqtts:// broker needs ca_file (the CA's PEM path on the device), "
                "and ca_file needs an mqtts:// broker",
            )
    if not t.topic_prefix or any(c in t.topic_prefix for c in "#+ "):
        raise _fail(loaded, "telemetry.topic_prefix", "non-empty, without '#', '+' or spaces")
    if not 1 <= t.window_s <= 3600:
        raise _fail(loaded, "telemetry.window_s", "must be between 1 and 3600 seconds")
    if t.budget_mb_day <= 0 or t.results_per_min <= 0:
        raise _fail(loaded, "telemetry.budget_mb_day", "budget and results_per_min must be > 0")
    if not 0 < t.drift_psi <= 10 or t.drift_min_samples < 1 or t.drift_windows < 1:
        raise _fail(
            loaded, "telemetry.drift_psi", "drift_psi in (0, 10], min_samples and windows >= 1"
        )


def _check_sizes(loaded: LoadedRecipe, *, check_files: bool) -> None:
    r = loaded.recipe
    spec = TARGETS[r.target.name]
    models_mib = 0.0
    if check_files:
        for role in ("primary", "fallback"):
            package = loaded.resolve(getattr(r.models, role))
            if not (package / "model.json").is_file():
                raise _fail(
                    loaded,
                    f"models.{role}",
                    f"no model package at {package} (model.json missing); "
                    "generate it (tools/make_reference_model.py) or fix the path",
                )
            models_mib += tree_size(package) / MIB
        if r.rootfs.tarball and not loaded.resolve(r.rootfs.tarball).is_file():
            raise _fail(
                loaded, "rootfs.tarball", f"{loaded.resolve(r.rootfs.tarball)} does not exist"
            )
        for dotted, value in [("board.bootloader", r.board.bootloader)] + [
            ("board.firmware", f) for f in r.board.firmware
        ]:
            if value and not loaded.resolve(value).is_file():
                raise _fail(
                    loaded,
                    dotted,
                    f"{loaded.resolve(value)} does not exist; the board's boot files are "
                    "supplied by you (the vendor's U-Boot build), never downloaded",
                )
        if r.runtime.prebuilt and not loaded.resolve(r.runtime.prebuilt).is_dir():
            raise _fail(
                loaded,
                "runtime.prebuilt",
                f"{loaded.resolve(r.runtime.prebuilt)} is not a directory",
            )
    extras_mib = RUNTIME_EXTRAS_MIB * len(set(r.runtime.extras))
    need = spec.rootfs_min_mib + extras_mib + int(models_mib) + 1
    if r.partitions.rootfs_mib < need:
        raise _fail(
            loaded,
            "partitions.rootfs_mib",
            f"{r.partitions.rootfs_mib} MiB is too small for the root filesystem of "
            f"{r.target.name} (needs at least {need} MiB: base system and runtime "
            f"{spec.rootfs_min_mib} + runtime extras {extras_mib} + models {models_mib:.0f}); "
            "raise it",
        )


def tree_size(root: Path) -> int:
    """Total bytes of regular files under ``root`` (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
    return total


def is_buildable(loaded: LoadedRecipe) -> bool:
    """Whether this builder can assemble the recipe's image today (GRUB EFI and U-Boot)."""
    t = loaded.recipe.target
    return t.arch in BUILDABLE_ARCHES and t.loader in ("grub-efi", "u-boot")
