"""Check a prebuilt onedir runtime (``--prebuilt DIR``) before it goes into an image.

A runtime built elsewhere (an arm64 runner, a Jetson) must fit the target: its executable and
its libpython are ELF files for the target's CPU, every CPython extension module is built for the
libpython's version and that CPU, the target's back-end library is present and no other back end
is, and the runtime can read a camera without OpenCV (linuxpy and simplejpeg frozen in: a runtime
built on a Jetson whose Python lacks them would raise a ``source_lost`` alert for every V4L2
camera). These checks read files only (the executable's archive with PyInstaller's own reader);
nothing from the runtime is executed.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from image.errors import BuildError
from image.freeze.targets import BACKEND_LIBRARIES, CAMERA_MODULES, TargetSpec

# ELF e_machine values (System V ABI, gABI table).
ELF_MACHINES: dict[int, str] = {62: "x86_64", 183: "aarch64", 40: "arm", 3: "i386"}
_EXT_RE = re.compile(r"\.cpython-(\d)(\d+)-([A-Za-z0-9_]+)-linux-gnu\.so$")
_LIBPYTHON_RE = re.compile(r"^libpython(\d)\.(\d+)\.so")


class PrebuiltRuntimeError(BuildError):
    """A prebuilt runtime does not fit the target (wrong CPU, Python ABI or back end)."""


@dataclass(frozen=True)
class PrebuiltInfo:
    """What the checks found."""

    arch: str
    python: str  # "3.11"
    backend_dir: Path


def elf_machine(path: Path) -> str:
    """The CPU an ELF file is built for (``x86_64``, ``aarch64``, ...)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(20)
    except OSError as exc:
        raise PrebuiltRuntimeError(f"{path}: cannot read: {exc}") from exc
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise PrebuiltRuntimeError(f"{path}: not an ELF file (a PyInstaller onedir executable)")
    if head[4] != 2:
        raise PrebuiltRuntimeError(f"{path}: 32-bit ELF; targets are 64-bit")
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", head[18:20])
    return ELF_MACHINES.get(machine, f"e_machine {machine}")


def check_prebuilt(root: Path, spec: TargetSpec) -> PrebuiltInfo:
    """Raise :class:`PrebuiltRuntimeError` unless *root* is a onedir runtime for *spec*."""
    exe = root / "appliance"
    internal = root / "_internal"
    if not exe.is_file() or not internal.is_dir():
        raise PrebuiltRuntimeError(
            f"{root}: not a PyInstaller onedir runtime (needs appliance and _internal/); "
            "pass the folder that holds the appliance executable"
        )
    arch = elf_machine(exe)
    if arch != spec.arch:
        raise PrebuiltRuntimeError(
            f"{exe}: built for {arch}, but target {spec.name} needs {spec.arch}; "
            f"build it on (or for) {spec.arch}"
        )
    libpythons = sorted(p for p in internal.iterdir() if _LIBPYTHON_RE.match(p.name))
    if not libpythons:
        raise PrebuiltRuntimeError(f"{internal}: no libpython3.X.so in the runtime")
    match = _LIBPYTHON_RE.match(libpythons[0].name)
    assert match is not None
    major, minor = match.groups()
    if elf_machine(libpythons[0]) != spec.arch:
        raise PrebuiltRuntimeError(f"{libpythons[0]}: not built for {spec.arch}")
    _check_extensions(internal, f"{major}{minor}", spec.arch)
    _check_camera(exe, spec)
    backend_dir = _check_backends(internal, spec)
    return PrebuiltInfo(arch=arch, python=f"{major}.{minor}", backend_dir=backend_dir)


def _check_extensions(internal: Path, abi: str, arch: str) -> None:
    """Every ``*.cpython-XY-ARCH-linux-gnu.so`` must match libpython's version and the CPU."""
    for path in sorted(internal.rglob("*.so")):
        m = _EXT_RE.search(path.name)
        if not m:
            continue
        tag_abi, tag_arch = m.group(1) + m.group(2), m.group(3)
        if tag_abi != abi or tag_arch != arch:
            raise PrebuiltRuntimeError(
                f"{path}: extension built for cpython-{tag_abi}-{tag_arch}, but the runtime's "
                f"libpython is {abi[0]}.{abi[1:]} on {arch}: rebuild the runtime in one environment"
            )


def frozen_modules(exe: Path) -> set[str]:
    """Names of the Python modules in a onedir executable's PYZ archive (read, never run)."""
    from PyInstaller.archive.readers import CArchiveReader

    try:
        package = CArchiveReader(str(exe))
        pyz = next(name for name in package.toc if name.endswith(".pyz"))
        return set(package.open_embedded_archive(pyz).toc)
    except (StopIteration, OSError, RuntimeError, ValueError) as exc:
        raise PrebuiltRuntimeError(
            f"{exe}: no PyInstaller module archive (PYZ) in it ({type(exc).__name__}: {exc}); "
            "pass a runtime made by kiln freeze (PyInstaller onedir)"
        ) from None


def _check_camera(exe: Path, spec: TargetSpec) -> None:
    """The camera modules every runtime carries (targets.CAMERA_MODULES) must be frozen in."""
    missing = [m for m in CAMERA_MODULES if m not in frozen_modules(exe)]
    if missing:
        raise PrebuiltRuntimeError(
            f"{exe}: cannot read a V4L2 camera without OpenCV: {', '.join(missing)} not frozen "
            f"in; install edgekiln[camera] (linuxpy, simplejpeg) where the runtime is built and "
            f"freeze it again with kiln freeze {spec.name}"
        )


def _check_backends(internal: Path, spec: TargetSpec) -> Path:
    """The target's back-end package must be in the runtime, and no other back end."""
    backend_dir = internal / BACKEND_LIBRARIES[spec.backend]
    if not backend_dir.is_dir():
        raise PrebuiltRuntimeError(
            f"{internal}: back end {spec.backend} ({backend_dir.name}/) missing; "
            f"freeze the runtime for target {spec.name}"
        )
    others = [
        key
        for key, module in BACKEND_LIBRARIES.items()
        if key not in spec.included and (internal / module).is_dir()
    ]
    if others:
        raise PrebuiltRuntimeError(
            f"{internal}: carries other back ends {others}; a target's runtime holds only its own "
            f"({', '.join(spec.included)}): freeze it with kiln freeze {spec.name}"
        )
    return backend_dir
