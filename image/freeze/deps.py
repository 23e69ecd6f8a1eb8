"""Which installed Python distributions a target's frozen runtime can contain.

Used for the cache key (only these distributions' versions invalidate a cached runtime: an
unrelated package installed into the build venv must not) and for the arm64 build, which
installs exactly these as aarch64 wheels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from image.freeze.targets import TargetSpec

# Optional-dependency groups of edgekiln that every device runtime carries (device roles).
DEVICE_EXTRAS = ("tui", "lan", "delta", "mqtt", "camera")
BACKEND_EXTRAS = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "litert": "litert",
    "opencv": "opencv",
    "tensorrt": "tensorrt",
}
BUILD_TOOLS = ("pyinstaller", "pyinstaller-hooks-contrib")
_IMPORT_RE = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", re.MULTILINE)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(spec: TargetSpec) -> list[str]:
    """Distributions edgekiln declares for the device roles and the target's libraries."""
    from packaging.requirements import Requirement

    extras = {*DEVICE_EXTRAS, *(BACKEND_EXTRAS[k] for k in spec.included if k in BACKEND_EXTRAS)}
    names = []
    for line in metadata.requires("edgekiln") or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            names.append(req.name)
    return sorted(set(names))


def imported(src: Path, spec: TargetSpec) -> list[str]:
    """Distributions providing the top-level modules the sources under *src* import."""
    modules: set[str] = set(spec.included_modules)
    for path in src.rglob("*.py"):
        modules.update(_IMPORT_RE.findall(path.read_text(encoding="utf-8", errors="replace")))
    excluded = {m.split(".")[0] for m in spec.excluded_modules if "." not in m}
    owners = metadata.packages_distributions()
    return sorted({d for m in modules - excluded for d in owners.get(m, [])})


def closure(names: Iterable[str]) -> dict[str, str]:
    """Installed distributions reachable from *names* through their requirements (name: version)."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if _canonical(name) in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[_canonical(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(found.items()))


def runtime_distributions(spec: TargetSpec, src: Path) -> dict[str, str]:
    """Every installed distribution the runtime for *spec* can bundle, plus the build tools."""
    return closure([*declared(spec), *imported(src, spec), *BUILD_TOOLS])
