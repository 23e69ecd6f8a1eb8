"""The recipe format: every table and field (msgspec structs), the target table, a loaded recipe.

What a field means and its default are here; how files are merged is in
:mod:`image.recipe.load`, what is checked beyond types in :mod:`image.recipe.checks`.
"""

from __future__ import annotations

import hashlib
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
    """The hardware target: one row of the target table (docs/decisions.md §22)."""

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
    ``fuse = false`` ships the packages without it. ``fp16`` (TensorRT targets): the optimised
    package lets the device's engine run float layers in FP16 (``BuilderFlag.FP16``); ``false``
    keeps them FP32 (INT8 layers stay INT8).
    Defaults are omitted from the recipe's canonical form, so a recipe without optimisation keeps
    its digest.
    """

    primary: str
    fallback: str
    optimise: bool = False
    max_accuracy_drop: float = 1.0
    select: Literal["fastest", "smallest", "fp32"] = "fastest"
    fuse: bool = True
    fp16: bool = True


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
    """Health-gate settings (docs/decisions.md §7)."""

    budget_factor: float = 1.0
    reference_count: int = 16


class Agent(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The agent service and the hardware watchdog (docs/decisions.md §4)."""

    watchdog_sec: int = 30
    runtime_watchdog_sec: int = 30


class PipelineDefaults(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The agent's first pipeline config, written to data (edgekiln/pipeline.json).

    ``source`` is a frame-source URI (appliance.inference.sources): a camera by default; a test
    profile may use ``npz:/opt/edgekiln/models/primary/reference.npz?loop=1&fps=5``.
    """

    source: str = "v4l2:///dev/video0"
    threads: int = 1


class TelemetrySettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Device telemetry (appliance/telemetry): off until ``broker`` names an MQTT broker.

    ``ca_file`` is a path on the device (e.g. provisioned on data) for ``mqtts://`` brokers.
    """

    broker: str = ""  # mqtt://HOST[:PORT] or mqtts://HOST[:PORT]
    topic_prefix: str = "edgekiln"
    ca_file: str = ""
    window_s: float = 60.0
    budget_mb_day: float = 5.0
    results: Literal["off", "sample", "all"] = "off"  # per-frame results on the uplink
    results_per_min: float = 6.0
    drift_psi: float = 0.2
    drift_min_samples: int = 200
    drift_windows: int = 5


class Signing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Signing key (private, on the build host) and keyring installed into the image."""

    key: str | None = None


class Update(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Hands-off updates (``appliance update run`` on a timer); no channel: updates off.

    Written into the slot as ``/etc/edgekiln/update.json`` with the channel's TUF root as
    ``/etc/edgekiln/tuf-root.json`` (rotated through TUF afterwards; checks in
    image/recipe/update_checks.py). ``window`` is local time and may cross midnight;
    ``bandwidth_cap`` is bytes/s with an optional k/M suffix.
    """

    channels: tuple[str, ...] = ()
    tuf_root: str | None = None
    poll_interval_s: int = 6 * 3600
    poll_jitter_s: int = 1800
    window: str | None = None
    bandwidth_cap: str | None = None
    metered: bool = False
    reboot: Literal["window", "now", "manual"] = "window"
    max_bundle_mib: int = 2048
    #: kiln publish --recipe: also publish deltas from the last N releases on the channel
    deltas: int = 0


class Runtime(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The frozen ``appliance`` runtime: a prebuilt PyInstaller onedir, or built by freeze.

    ``extras`` bundles more libraries than the back end needs: ``"opencv"`` adds OpenCV (about
    150 MiB) for RTSP/HTTP streams, video files and PNG/BMP folders, and cv2.dnn as a second
    back end of the fallback chain. No target needs it to read a V4L2 camera.
    """

    prebuilt: str | None = None
    extras: tuple[Literal["opencv"], ...] = ()


class Board(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A U-Boot board's own boot files, supplied by the user (vendor licences; never downloaded).

    ``bootloader``: the board's U-Boot image (e.g. the i.MX 8M ``flash.bin``: SPL, ATF, U-Boot),
    written raw at ``bootloader_offset_kib`` of the disk (between the GPT and the first
    partition, which starts at ``first_partition_mib``); ``firmware``: files copied to the boot
    partition's root; ``dtb``: the device tree for the kernel, relative to the kernel package's
    ``/usr/lib/linux-image-<version>/`` (linked as ``/boot/dtb`` in each slot; none: the
    firmware's own device tree).
    """

    bootloader: str | None = None
    bootloader_offset_kib: int = 33
    first_partition_mib: int = 1
    firmware: tuple[str, ...] = ()
    dtb: str | None = None


class Lan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The site-LAN API (``appliance api serve``): off unless ``api = true``.

    ``interface`` is the LAN interface it listens on (``auto``: the default route's).
    ``fault_injection`` is for test images only (the QEMU test profile): it writes
    ``/etc/edgekiln/fault-injection`` into the slot, which gives the API a route that stops the
    agent so systemd's watchdog restarts it (appliance/api/faults.py). Never in a product recipe.
    """

    api: bool = False
    interface: str = "auto"
    port: int = 8443
    fault_injection: bool = False


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
    telemetry: TelemetrySettings = TelemetrySettings()
    update: Update = Update()
    lan: Lan = Lan()
    board: Board = Board()


# --- the target table (docs/decisions.md §22) ----------------------------------------------------


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
BUILDABLE_ARCHES = ("amd64", "arm64")
RUNTIME_EXTRAS_MIB = 170  # OpenCV in the frozen runtime: 159 MB measured, with headroom

#: highest health.budget_factor a recipe may carry (emulation under QEMU TCG needs 500)
MAX_BUDGET_FACTOR = 1000.0
BOOT_MIN_MIB = 40  # FAT32 with 512-byte clusters needs >= 65525 clusters (~33 MiB) + slack
DATA_MIN_MIB = 32


# --- a loaded recipe ---------------------------------------------------------------------------


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
        if self.recipe.lan == Lan():
            del data["lan"]  # a recipe without [lan] keeps its digest
        return data

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of the resolved recipe."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


def canonical_json(data: Any) -> bytes:
    """Sorted-key compact JSON: stable bytes for hashing."""
    return msgspec.json.encode(data, order="sorted")


def origin_of(prov: dict[str, Path], dotted: str, default: Path) -> Path:
    """File that set ``dotted`` (or its closest parent table)."""
    key = dotted
    while key:
        if key in prov:
            return prov[key]
        key = key.rpartition(".")[0]
    return default
