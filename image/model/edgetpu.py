"""``kiln model edgetpu``: give a LiteRT package its Edge TPU file (``*_edgetpu.tflite``).

An Edge TPU file is a full-INT8 .tflite compiled by Coral's ``edgetpu_compiler`` (Debian package
``edgetpu-compiler``, x86-64 only, from Coral's own apt repository): the operators it maps to the
Edge TPU become one custom operator, ``edgetpu-custom-op``, that holds the compiled program. The
builder never has it by default, so this either runs it when it is on PATH, or takes a file the
user compiled elsewhere (``--compiled``). Either way the file is checked before it is listed:
a .tflite FlatBuffer whose operators use ``edgetpu-custom-op`` (a CPU .tflite renamed is
refused) and whose input quantisation is that of the package's INT8 file it was compiled from.
The device runs it when the Edge TPU delegate loads, and the CPU file otherwise
(appliance/inference/backends/litert.py).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from appliance.fsutil import atomic_write_bytes
from appliance.inference.package import ModelFile, load_package
from image.errors import BuildError
from image.model.tflite_file import TensorSpec, TfliteInfo, read_tflite

COMPILER = "edgetpu_compiler"
CUSTOM_OP = "edgetpu-custom-op"
INSTALL_HINT = (
    "install Coral's Debian package edgetpu-compiler (x86-64 only, from Coral's apt "
    "repository), or compile elsewhere with `edgetpu_compiler -s model_int8.tflite` and pass "
    "--compiled model_int8_edgetpu.tflite"
)


class EdgeTpuFileError(BuildError):
    """A file offered as an Edge TPU model is not one (or not of this package)."""


class EdgeTpuCompilerMissingError(BuildError):
    """``edgetpu_compiler`` is needed and not on PATH."""


def check_edgetpu_file(data: bytes, where: str) -> TfliteInfo:
    """The file's facts if it is a compiled Edge TPU .tflite; else a named error."""
    info = read_tflite(data, where)
    if CUSTOM_OP not in info.used_custom:
        ops = sorted(info.used_custom) or ["none"]
        raise EdgeTpuFileError(
            f"{where}: no operator uses the custom op {CUSTOM_OP!r} (custom ops used: "
            f"{', '.join(ops)}): this is a CPU .tflite, not one compiled for the Edge TPU; "
            f"compile the full-INT8 file with {COMPILER}"
        )
    if info.input.dtype not in ("uint8", "int8") or info.input.scale is None:
        raise EdgeTpuFileError(
            f"{where}: input {info.input.name!r} is {info.input.dtype} without quantisation; "
            "the Edge TPU takes a quantised uint8/int8 input"
        )
    return info


def int8_source(files: list[ModelFile], where: Path) -> ModelFile:
    """The package's full-INT8 CPU .tflite (what ``edgetpu_compiler`` compiles)."""
    for f in files:
        if f.format == "tflite" and f.precision in ("int8", "uint8"):
            return f
    raise EdgeTpuFileError(
        f"{where}: files: no full-INT8 .tflite (format tflite, precision int8/uint8); the Edge "
        "TPU file is compiled from one: add it first (TensorFlow Lite converter, full integer)"
    )


def compile_edgetpu(source: Path, out_dir: Path, compiler: str | None) -> Path:
    """Run ``edgetpu_compiler -s -o OUT_DIR SOURCE``; the ``*_edgetpu.tflite`` it wrote."""
    if compiler is None:
        raise EdgeTpuCompilerMissingError(
            f"{source}: {COMPILER} is not on PATH and it is needed to make the Edge TPU file; "
            + INSTALL_HINT
        )
    proc = subprocess.run(
        [compiler, "-s", "-o", str(out_dir), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    made = out_dir / f"{source.stem}_edgetpu.tflite"
    if proc.returncode != 0 or not made.is_file():
        raise EdgeTpuFileError(
            f"{source}: {COMPILER} failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-400:]}"
        )
    return made


def add_edgetpu_file(
    package_dir: Path, compiled: Path | None = None, compiler: str | None = None
) -> ModelFile:
    """List an Edge TPU file in the package (compiled now, or ``compiled`` as given); in place.

    ``compiler`` defaults to ``edgetpu_compiler`` found on PATH.
    """
    package = load_package(package_dir)
    source = int8_source(list(package.manifest.files), package.manifest_path)
    tool = compiler or shutil.which(COMPILER)
    if compiled is None and tool is None:
        raise EdgeTpuCompilerMissingError(
            f"{package.path_of(source)}: {COMPILER} is not on PATH and it is needed to make the "
            "Edge TPU file; " + INSTALL_HINT
        )
    with tempfile.TemporaryDirectory(prefix="kiln-edgetpu-") as tmp:
        if compiled is None:
            src = Path(tmp) / source.path
            src.write_bytes(package.read_verified(source))
            compiled = compile_edgetpu(src, Path(tmp), tool)
        data = compiled.read_bytes()
    info = check_edgetpu_file(data, str(compiled))
    q = source.quantization
    want = read_tflite(package.read_verified(source), str(package.path_of(source)))
    for kind, have, should in (
        ("input", info.input, want.input),
        ("output", info.output, want.output),
    ):
        if not _same(have, should):
            raise EdgeTpuFileError(
                f"{compiled}: {kind} is {_spec(have)}, but {source.path} (what it must be "
                f"compiled from) has {_spec(should)}; compile this package's {source.path}"
            )
    name = f"{Path(source.path).stem}_edgetpu.tflite"
    entry: dict[str, Any] = {
        "path": name,
        "format": "edgetpu-tflite",
        "precision": source.precision,
        "sha256": hashlib.sha256(data).hexdigest(),
        "layout": "NHWC",
    }
    if q is not None:
        entry["quantization"] = _q(q)
    manifest = json.loads(package.manifest_path.read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != name] + [entry]
    atomic_write_bytes(package_dir / name, data)
    atomic_write_bytes(package.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return next(f for f in load_package(package_dir).manifest.files if f.path == name)


def _same(a: TensorSpec, b: TensorSpec) -> bool:
    """Same type, shape and quantisation (what compiling leaves unchanged at the model's edge)."""
    scales = (a.scale or 0.0, b.scale or 0.0)
    close = abs(scales[0] - scales[1]) <= 1e-6 * max(abs(scales[1]), 1e-12)
    return (a.dtype, a.shape, a.zero_point) == (b.dtype, b.shape, b.zero_point) and close


def _spec(t: TensorSpec) -> str:
    return f"{t.dtype} {list(t.shape)} scale {t.scale} zero_point {t.zero_point}"


def _q(q: Any) -> dict[str, Any]:
    import msgspec

    return {k: v for k, v in msgspec.structs.asdict(q).items() if v is not None}
