"""The optimisation table (optimisation.json) and how a run's output package takes its place.

One table per ``kiln model optimise`` run: every variant measured (file, precision, top-1,
latency, size, gate verdict), the one selected and the gate's settings. It ships inside the
output package beside model.json (whose provenance names it). Shared by the ONNX/OpenVINO path
(:mod:`image.model.optimise`) and the LiteRT pass-through (:mod:`image.model.passthrough`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TABLE_FILE = "optimisation.json"


@dataclass
class Variant:
    """One row of the table: a file run with one set of runtime options."""

    name: str
    file: str
    precision: str
    hint: str  # the runtime's execution precision hint ("f32", "default" = the CPU's choice)
    top1: float = 0.0
    drop_pp: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    size_bytes: int = 0
    passed: bool = False
    device: str = ""
    note: str = ""
    error: str = ""  # why it could not be built, loaded or run (then it never passes)
    # OpenVINO INT8 rows: top-1 per instruction set ("host" = the build host's, "avx2" = oneDNN
    # capped at AVX2, the target's weakest); ``top1``/``drop_pp`` above are the host's figures.
    top1_isa: dict[str, float] = field(default_factory=dict)
    drop_pp_isa: dict[str, float] = field(default_factory=dict)


@dataclass
class Optimisation:
    """The result of one run: every variant, the selected one, and the gate's settings."""

    package: str
    target: str
    runtime: str
    threads: int
    max_accuracy_drop: float
    parent_top1: float
    images: int
    variants: list[Variant] = field(default_factory=list)
    selected: str = ""
    speedup: float = 1.0
    size_ratio: float = 1.0
    notes: list[str] = field(default_factory=list)
    # The FP32 parent's top-1 per instruction set the INT8 rows were gated on (OpenVINO only).
    parent_top1_isa: dict[str, float] = field(default_factory=dict)
    output: str = ""
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def result_from_json(data: dict[str, Any]) -> Optimisation:
    """An :class:`Optimisation` read back from its optimisation.json."""
    variants = [Variant(**v) for v in data.pop("variants", [])]
    return Optimisation(**data, variants=variants)


def replace_tree(src: Path, dst: Path, *, move: bool = False) -> None:
    """Put ``src`` at ``dst`` (an existing ``dst`` is removed only once the new one is complete)."""
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    if not move:
        staged = dst.with_name(f".{dst.name}.new-{os.getpid()}")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(src, staged)
        src = staged
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
