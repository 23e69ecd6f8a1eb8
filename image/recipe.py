"""Recipes: TOML files with ``extends``, merged and validated before any build stage runs.

A recipe names a hardware target, the model packages, partition sizes and the base system. Files
are read with :mod:`tomllib`; ``extends = "base.toml"`` (relative to the file) pulls in a base
whose tables are merged key by key (lists and scalars of the child replace the base's). The merged
document is converted to the typed :class:`Recipe` with msgspec (unknown keys refused), then
checked against the target table and the file system. Every error names the file that set the
offending field and the field's dotted path.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from image.errors import BuildError

MIB = 1024 * 1024


class RecipeError(BuildError):
    """A recipe file is unreadable, malformed or inconsistent."""

    def __init__(self, path: Path | str, field_path: str, message: str) -> None:
        self.path = Path(path)
        self.field = field_path
        where = f"{self.path}: {field_path}" if field_path else str(self.path)
        super().__init__(f"{where}: {message}")


# --- the schema --------------------------------------------------------------------------------


class Target(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The hardware target: one row of ARCHITECTURE's target table."""

    name: str
    arch: Literal["amd64", "arm64"]
    backend: Literal["onnxruntime", "openvino", "litert", "tensorrt"]
    loader: Literal["grub-efi", "u-boot", "l4t"]


class Models(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """Model package directories (model package format v1), relative to the recipe.

    ``optimise = true`` runs ``kiln model optimise`` for the recipe's target on both packages
    before the slot stage (image/model/stage.py): INT8 and reduced-precision variants measured on
    the target's runtime, gated at ``max_accuracy_drop`` percentage points of top-1 below the
    FP32 parent, then ``select`` picks what ships: the ``fastest`` passing variant, the
    ``smallest`` one, or the ``fp32`` parent (the table is still measured and shipped).
    ``fuse = true`` (the default) then gives each package the fused variant of the ONNX file the
    target's runtime picks (image/model/fuse_stage.py): pre-processing, softmax and top-k in the
    graph, uint8 BGR frames in, checked against the plain file on the reference split. Only
    runtimes that run fused files get one (onnxruntime, OpenVINO on an ONNX file, OpenCV);
    ``fuse = false`` ships the packages without it.
    Defaults are omitted from the recipe's canonical form, so a recipe without optimisation keeps
    its digest.
    """

    primary: str
    fallback: str
    optimise: bool = False
    max_accuracy_drop: float = 1.0
    select: Literal["fastest", "smallest", "fp32"] = "fastest"
    fuse: bool = True


class Partitions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Partition sizes in MiB; ``rootfs_mib`` is the size of each of the two slots."""

    boot_mib: int = 64
    rootfs_mib: int = 1024
    data_mib: int = 256


class Rootfs(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The base root filesystem: a Debian bootstrap, or a supplied tarball."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    variant: Literal["minbase", "essential", "apt", "required", "important", "standard"] = "minbase"
    components: list[str] = msgspec.field(default_factory=lambda: ["main"])
    packages: list[str] = []
    extra_packages: list[str] = []
    tarball: str | None = None
    filesystem: Literal["ext4"] = "ext4"


class Kernel(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Kernel command line appended after ``root=PARTLABEL=<slot> ro``."""

    cmdline: str = "console=ttyS0,115200 console=tty0 rootwait"


class Health(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Health-gate settings (ARCHITECTURE Decision 7)."""

    budget_factor: float = 1.0
    reference_count: int = 16


class Agent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The agent service and the hardware watchdog (ARCHITECTURE Decision 4)."""

    watchdog_sec: int = 30
    runtime_watchdog_sec: int = 30


class PipelineDefaults(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The agent's first pipeline config, written to data (edgekiln/pipeline.json).

    ``source`` is a frame-source URI (appliance.inference.sources): a camera by default; a test
    profile may use ``npz:/opt/edgekiln/models/primary/reference.npz?loop=1&fps=5``.
    """

    source: str = "v4l2:///dev/video0"
    threads: int = 1


class Signing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Signing key (private, on the build host) and keyring installed into the image."""

    key: str | None = None


class Runtime(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The frozen ``appliance`` runtime: a prebuilt PyInstaller onedir, or built by freeze.

    ``extras`` bundles more libraries than the back end needs: ``"opencv"`` adds OpenCV for
    camera capture (V4L2, RTSP, video files) and the cv2.dnn fallback back end, about 160 MB.
    """

    prebuilt: str | None = None
    extras: tuple[Literal["opencv"], ...] = ()


class Recipe(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A fully merged, typed recipe."""

    product: str
    version: str
    security_version: int
    target: Target
    models: Models
    description: str = ""
    partitions: Partitions = Partitions()
    rootfs: Rootfs = Rootfs()
    kernel: Kernel = Kernel()
    health: Health = Health()
    agent: Agent = Agent()
    signing: Signing = Signing()
    runtime: Runtime = Runtime()
    pipeline: PipelineDefaults = PipelineDefaults()


# --- the target table (ARCHITECTURE "Targets") -------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """What a known target must look like, and a lower bound for its root filesystem."""

    arch: str
    backends: tuple[str, ...]
    loader: str
    # Base system + kernel + initrd + frozen runtime with this back end, in MiB (measured, with
    # headroom for ext4 metadata); model packages are added on top.
    rootfs_min_mib: int


TARGETS: dict[str, TargetSpec] = {
    "generic-x86-64": TargetSpec("amd64", ("onnxruntime",), "grub-efi", 960),
    "intel-openvino": TargetSpec("amd64", ("openvino", "onnxruntime"), "grub-efi", 1040),
    "coral-usb-arm64": TargetSpec("arm64", ("litert",), "u-boot", 560),
    "coral-devboard": TargetSpec("arm64", ("litert",), "u-boot", 560),
    "jetson-orin": TargetSpec("arm64", ("tensorrt", "onnxruntime"), "l4t", 1200),
}
BUILDABLE_ARCHES = ("amd64",)
RUNTIME_EXTRAS_MIB = 170  # OpenCV in the frozen runtime: 159 MB measured, with headroom

#: highest health.budget_factor a recipe may carry (emulation under QEMU TCG needs 500)
MAX_BUDGET_FACTOR = 1000.0
BOOT_MIN_MIB = 40  # FAT32 with 512-byte clusters needs >= 65525 clusters (~33 MiB) + slack
DATA_MIN_MIB = 32
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?$")
_PRODUCT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PATH_FIELDS = (
    "models.primary",
    "models.fallback",
    "rootfs.tarball",
    "signing.key",
    "runtime.prebuilt",
)


# --- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe plus where it came from.

    Path fields inside ``recipe`` are relative to ``root`` (the directory of the top recipe
    file), so the recipe digest does not depend on where the checkout lives.
    """

    recipe: Recipe
    path: Path
    files: tuple[Path, ...]
    provenance: dict[str, Path] = field(repr=False)

    @property
    def root(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """Absolute path of a path field's value."""
        return (self.root / relative).resolve()

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data (for ``--plan`` and the manifest)."""
        data: dict[str, Any] = msgspec.to_builtins(self.recipe)
        return data

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of the resolved recipe."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


def canonical_json(data: Any) -> bytes:
    """Sorted-key compact JSON: stable bytes for hashing."""
    return msgspec.json.encode(data, order="sorted")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(path, "", "file not found; check the path") from None
    except OSError as exc:
        raise RecipeError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(path, "", f"not valid TOML: {exc}") from None


def _merge(
    base: dict[str, Any],
    child: dict[str, Any],
    origin: Path,
    prov: dict[str, Path],
    prefix: str = "",
) -> dict[str, Any]:
    """Deep-merge tables; anything else in ``child`` replaces ``base``. Records field origins."""
    out = dict(base)
    for key, value in child.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origin, prov, dotted + ".")
        else:
            out[key] = value
            _mark(value, dotted, origin, prov)
    return out


def _mark(value: Any, dotted: str, origin: Path, prov: dict[str, Path]) -> None:
    # Drop stale origins below a replaced key, then record the new ones.
    for stale in [k for k in prov if k == dotted or k.startswith(dotted + ".")]:
        del prov[stale]
    prov[dotted] = origin
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(sub, f"{dotted}.{key}", origin, prov)


def _load_chain(path: Path, prov: dict[str, Path], seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(str(p) for p in (*seen, path))
        raise RecipeError(path, "extends", f"cycle in extends: {cycle}; remove one of the links")
    data = _read_toml(path)
    parent = data.pop("extends", None)
    merged: dict[str, Any] = {}
    if parent is not None:
        if not isinstance(parent, str) or not parent:
            raise RecipeError(path, "extends", "must be a relative path string to a base recipe")
        merged = _load_chain(path.parent / parent, prov, (*seen, path))
    return _merge(merged, data, path, prov)


def _origin(prov: dict[str, Path], dotted: str, default: Path) -> Path:
    """File that set ``dotted`` (or its closest parent table)."""
    key = dotted
    while key:
        if key in prov:
            return prov[key]
        key = key.rpartition(".")[0]
    return default


_AT_RE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<at>[^`]*)`)?$")
_FIELD_RE = re.compile(r"field `(?P<name>[^`]+)`")


def _field_of(error: msgspec.ValidationError) -> tuple[str, str]:
    """(dotted field, message) out of a msgspec validation error."""
    match = _AT_RE.match(str(error))
    what = match.group("what") if match else str(error)
    at = (match.group("at") or "") if match else ""
    dotted = re.sub(r"\[(\d+)\]", r".\1", at).lstrip(".")
    named = _FIELD_RE.search(what)
    if named:
        dotted = f"{dotted}.{named.group('name')}".lstrip(".")
    return dotted, what


def _literal_choices(dotted: str) -> tuple[str, ...]:
    """Allowed values of a ``Literal`` field of :class:`Recipe`, for friendlier errors."""
    kind: Any = Recipe
    for part in dotted.split("."):
        hints = typing.get_type_hints(kind) if isinstance(kind, type) else {}
        if part not in hints:
            return ()
        kind = hints[part]
    if typing.get_origin(kind) is Literal:
        return tuple(str(a) for a in typing.get_args(kind))
    return ()


def load_recipe(path: Path | str, *, check_files: bool = True) -> LoadedRecipe:
    """Read, merge and validate a recipe; raise :class:`RecipeError` naming file and field.

    ``check_files`` also checks that referenced model packages (and a supplied tarball or
    prebuilt runtime) exist, and that the root partition can hold what goes into it.
    """
    top = Path(path).resolve()
    prov: dict[str, Path] = {}
    merged = _load_chain(top, prov, ())

    # Rebase path fields onto the top recipe's directory before typing, so an ``extends``
    # base can name its model packages relative to itself.
    for dotted in _PATH_FIELDS:
        table, _, key = dotted.partition(".")
        section = merged.get(table)
        if isinstance(section, dict) and isinstance(section.get(key), str):
            origin = _origin(prov, dotted, top)
            absolute = (origin.parent / section[key]).resolve()
            section[key] = os.path.relpath(absolute, top.parent)

    try:
        recipe = msgspec.convert(merged, Recipe)
    except msgspec.ValidationError as exc:
        dotted, what = _field_of(exc)
        allowed = _literal_choices(dotted)
        if allowed:
            what += f"; use one of: {', '.join(allowed)}"
        raise RecipeError(_origin(prov, dotted, top), dotted, what) from None

    loaded = LoadedRecipe(recipe, top, tuple(sorted(set(prov.values()) | {top})), prov)
    _check(loaded, check_files=check_files)
    return loaded


def _fail(loaded: LoadedRecipe, dotted: str, message: str) -> RecipeError:
    return RecipeError(_origin(loaded.provenance, dotted, loaded.path), dotted, message)


def _check(loaded: LoadedRecipe, *, check_files: bool) -> None:
    _check_identity(loaded)
    _check_settings(loaded)
    _check_models(loaded)
    _check_pipeline(loaded)
    _check_sizes(loaded, check_files=check_files)


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


def _check_settings(loaded: LoadedRecipe) -> None:
    r = loaded.recipe
    # QEMU TCG needs hundreds (recipes/qemu-x86-64.toml); above 1000 it is a typo
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
    """Whether this builder can assemble the recipe's image today (arm64 is a later issue)."""
    return loaded.recipe.target.arch in BUILDABLE_ARCHES
