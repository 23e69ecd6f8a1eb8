"""Which inference back end (and which of its libraries) each hardware target's runtime carries.

A frozen runtime holds exactly one back end. This table says, per target, which Python packages
are bundled, which are kept out on purpose (PyInstaller follows ``import`` statements even inside
functions, so every other back end must be excluded by name), and how the OpenVINO hook is set up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from appliance.info_cli import BACKEND_MODULES
from image.errors import BuildError


class UnknownTargetError(BuildError):
    """The name is neither a known hardware target nor a back end."""


# Top-level import name of every inference library any target may carry: the table the frozen
# program's ``appliance info`` reports from, so the smoke check compares like with like.
BACKEND_LIBRARIES: dict[str, str] = BACKEND_MODULES

# Camera capture every runtime carries, whatever its back end: V4L2 through linuxpy (pure Python)
# and MJPEG through simplejpeg (libjpeg-turbo), so no target needs OpenCV to read its camera.
CAMERA_MODULES: tuple[str, ...] = ("linuxpy.video.device", "simplejpeg")

# Build-host tools and test libraries that must never reach a device, even if something imports
# them lazily (``image`` is the builder; appliance never imports it, this only enforces it).
ALWAYS_EXCLUDED: tuple[str, ...] = (
    "image",
    "PyInstaller",
    "_pyinstaller_hooks_contrib",
    "onnx",
    "nncf",
    "tensorflow",
    "torch",
    "matplotlib",
    "tkinter",
    "_tkinter",
    "IPython",
    "pytest",
    "_pytest",
    "hypothesis",
    "mypy",
    "pip",
    "setuptools",
    "openvino_telemetry",
    # OpenVINO's model conversion (ovc) and its TensorFlow/PyTorch/JAX front ends: build host only.
    "openvino.tools",
    "openvino.torch",
    "openvino.frontend.tensorflow",
    "openvino.frontend.pytorch",
    "openvino.frontend.jax",
    "openvino.frontend.paddle",
    # onnxruntime's model tools (transformers, quantisation) pull in PIL and onnx.
    "onnxruntime.transformers",
    "onnxruntime.quantization",
    "onnxruntime.tools",
    "PIL",
    # zstandard ships two back ends; the C one is used on CPython, the cffi one is 12 MB more.
    "zstandard.backend_cffi",
    "zstandard._cffi",
    "cffi",
)

# OpenVINO plug-ins and front ends needed per device family (file stems in openvino/libs).
OPENVINO_FRONTENDS: tuple[str, ...] = ("onnx", "ir")
OPENVINO_PLUGINS: tuple[str, ...] = ("intel_cpu", "intel_gpu", "intel_npu", "auto")


@dataclass(frozen=True)
class TargetSpec:
    """What one target's frozen runtime contains."""

    name: str
    arch: str  # ``platform.machine()`` of the device: x86_64 or aarch64
    backend: str  # key of BACKEND_LIBRARIES
    extras: tuple[str, ...] = ()  # further BACKEND_LIBRARIES keys bundled (e.g. opencv)
    hooksconfig: dict[str, Any] = field(default_factory=dict)
    # Why this target cannot be frozen on a normal build host (None: it can).
    unbuildable_here: str | None = None
    # Strip debug sections from bundled ELF files that carry them (libpython, lib-dynload,
    # some wheels) but were not patchelf-repaired; see image.freeze.pyinstaller.strip_debug_info.
    strip: bool = True

    @property
    def included(self) -> tuple[str, ...]:
        """Back-end keys whose libraries are bundled."""
        return (self.backend, *self.extras)

    @property
    def backends(self) -> tuple[str, ...]:
        """The inference back ends the runtime can load, its own first (then the extras')."""
        return self.included

    @property
    def included_modules(self) -> tuple[str, ...]:
        """Top-level modules of the bundled back-end libraries."""
        return tuple(BACKEND_LIBRARIES[k] for k in self.included)

    @property
    def excluded_modules(self) -> tuple[str, ...]:
        """Modules PyInstaller must not follow: other back ends plus build-host tools."""
        others = [m for k, m in BACKEND_LIBRARIES.items() if k not in self.included]
        return tuple(sorted({*others, *ALWAYS_EXCLUDED}))

    def with_extras(self, extras: tuple[str, ...]) -> TargetSpec:
        """The same target with more libraries bundled (e.g. ``("opencv",)``)."""
        for extra in extras:
            if extra not in BACKEND_LIBRARIES:
                raise UnknownTargetError(
                    f"unknown extra library {extra!r}: choose from {', '.join(BACKEND_LIBRARIES)}"
                )
        merged = tuple(dict.fromkeys((*self.extras, *extras)))
        return replace(self, extras=merged)


_OPENVINO_HOOK = {
    "openvino": {"frontends": list(OPENVINO_FRONTENDS), "plugins": list(OPENVINO_PLUGINS)}
}
_TENSORRT_WHY = (
    "TensorRT is installable only from NVIDIA's package index or JetPack, not on this build "
    "host; build the runtime on a Jetson (or an arm64 runner with JetPack) and pass it "
    "with --prebuilt DIR"
)

TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        TargetSpec("generic-x86-64", "x86_64", "onnxruntime"),
        TargetSpec("intel-openvino", "x86_64", "openvino", hooksconfig=_OPENVINO_HOOK),
        TargetSpec("coral-usb-arm64", "aarch64", "litert"),
        TargetSpec("coral-devboard", "aarch64", "litert"),
        TargetSpec("jetson-orin", "aarch64", "tensorrt", unbuildable_here=_TENSORRT_WHY),
    )
}

# A bare back-end name stands for its canonical target.
BACKEND_TARGETS: dict[str, str] = {
    "onnxruntime": "generic-x86-64",
    "openvino": "intel-openvino",
    "litert": "coral-usb-arm64",
    "tensorrt": "jetson-orin",
}


def recipe_spec(recipe: Any) -> TargetSpec:
    """The runtime a recipe asks for: its target, its back end and its ``[runtime] extras``.

    ``recipe`` is an :class:`image.recipe.LoadedRecipe` or :class:`image.recipe.Recipe`. The
    image builder freezes this spec, writes its back ends into ``pipeline.json`` and
    ``device.json``, and the model step ships only files these back ends read.
    """
    recipe = getattr(recipe, "recipe", recipe)  # LoadedRecipe or Recipe
    spec = resolve_target(recipe.target.name)
    if recipe.target.backend != spec.backend:
        spec = replace(spec, backend=recipe.target.backend)
    extras = tuple(getattr(getattr(recipe, "runtime", None), "extras", ()))
    return spec.with_extras(extras) if extras else spec


def resolve_target(name: str) -> TargetSpec:
    """Map a target name (``generic-x86-64``) or back-end name (``onnxruntime``) to its spec."""
    key = BACKEND_TARGETS.get(name, name)
    try:
        return TARGETS[key]
    except KeyError:
        known = ", ".join([*TARGETS, *BACKEND_TARGETS])
        raise UnknownTargetError(f"unknown target {name!r}: choose one of {known}") from None
