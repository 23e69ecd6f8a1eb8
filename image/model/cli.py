"""``kiln model optimise PKG --target T``, ``kiln model fuse PKG``, ``kiln model compare A B``,
``kiln model edgetpu PKG [--compiled F]``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from image.model.optimise import DEFAULT_MAX_DROP, SELECT_CHOICES, TARGET_RUNTIMES
from image.model.table import Optimisation


def _cache_dir() -> Path:
    base = os.environ.get("KILN_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgekiln"
    )
    return Path(base) / "models"


def format_table(res: Optimisation) -> str:
    """The variant table as fixed-width text (what a build log shows)."""
    lines = [
        f"{res.package} -> {res.runtime} ({res.threads} thread(s), {res.images} reference "
        f"images, gate: drop <= {res.max_accuracy_drop * 100:.2f} pp)",
        f"{'variant':<24} {'top-1':>7} {'drop pp':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'size MB':>8}  gate",
    ]
    for v in res.variants:
        mark = " <- selected" if v.name == res.selected else ""
        if v.error:  # could not be built, loaded or run: the reason, one line
            why = " ".join(v.error.split())
            lines.append(
                f"{v.name:<24} {'-':>7} {'-':>8} {'-':>8} {'-':>8} {'-':>8}  FAILED: {why}"
            )
            continue
        lines.append(
            f"{v.name:<24} {v.top1:>7.4f} {v.drop_pp:>8.2f} {v.p50_ms:>8.3f} {v.p95_ms:>8.3f} "
            f"{v.size_bytes / 1e6:>8.3f}  {'pass' if v.passed else 'FAIL'}{mark}"
            + "".join(f"  [{k}: {d:.2f} pp]" for k, d in v.drop_pp_isa.items() if k != "host")
            + (f"  ({v.note})" if v.note else "")
        )
    if res.variants:
        lines.append(f"speed-up over FP32 {res.speedup:.2f}x, size ratio {res.size_ratio:.2f}x")
    lines += [f"note: {n}" for n in res.notes]
    return "\n".join(lines)


@click.group()
def model() -> None:
    """Model optimisation per target (INT8 with an accuracy gate), fusing, A/B comparison."""


@model.command()
@click.argument("package", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--target", required=True, type=click.Choice(sorted(TARGET_RUNTIMES)), help="Target or runtime."
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output package directory.")
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=DEFAULT_MAX_DROP,
    show_default=True,
    help="Largest top-1 drop (fraction) allowed against the FP32 parent on the same runtime.",
)
@click.option("--threads", type=int, default=1, show_default=True, help="Runtime threads.")
@click.option(
    "--calibration",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use this .npz (key 'images') instead of the package's calibration split.",
)
@click.option(
    "--allow-fallback", is_flag=True, help="Ship the best passing non-INT8 variant if INT8 fails."
)
@click.option(
    "--select",
    type=click.Choice(SELECT_CHOICES),
    default="fastest",
    show_default=True,
    help="Ship the fastest passing variant, the fastest passing INT8 one, the smallest passing "
    "one, or the FP32 parent (with the table).",
)
@click.option(
    "--skip-weakest-isa-gate",
    is_flag=True,
    help="onnxruntime: do not evaluate INT8 rows again under qemu-x86_64-static -cpu Haswell "
    "(recorded in optimisation.json).",
)
@click.option(
    "--fp16/--no-fp16",
    default=True,
    show_default=True,
    help="TensorRT targets: let the device's engine run float layers in FP16 (BuilderFlag.FP16).",
)
@click.option(
    "--fallback-backend",
    "fallback_backends",
    multiple=True,
    type=click.Choice(["onnxruntime", "opencv"]),
    help="Another back end the device's runtime carries (repeatable; e.g. opencv for a recipe "
    'with [runtime] extras = ["opencv"]): if it cannot load the shipped file, FP32 ships beside.',
)
@click.option("--no-cache", is_flag=True, help="Do not read or fill the content-hash cache.")
def optimise(
    package: Path,
    target: str,
    output: Path | None,
    max_accuracy_drop: float,
    threads: int,
    calibration: Path | None,
    allow_fallback: bool,
    select: str,
    skip_weakest_isa_gate: bool,
    fp16: bool,
    fallback_backends: tuple[str, ...],
    no_cache: bool,
) -> None:
    """Build the target runtime's variants, gate them on the reference split, ship the fastest."""
    from image.model.optimise import optimise as run

    out = output or package.with_name(f"{package.name}-{target}")
    res = run(
        package,
        target,
        out,
        max_accuracy_drop=max_accuracy_drop,
        threads=threads,
        calibration=calibration,
        allow_fallback=allow_fallback,
        select=select,
        weakest_isa_gate=not skip_weakest_isa_gate,
        fp16=fp16,
        fallback_backends=fallback_backends,
        cache_dir=None if no_cache else _cache_dir(),
    )
    click.echo(format_table(res))
    click.echo(f"wrote {out}{' (from cache)' if res.cached else ''}")


@model.command()
@click.argument("old", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="An .npz (images, labels) to compare on; default: NEW's reference split.",
)
@click.option("--backend", default="onnxruntime", show_default=True, help="Runtime to run both on.")
@click.option("--report", type=click.Path(path_type=Path), help="Directory for report.html + PNGs.")
@click.option("--max-accuracy-drop", type=float, default=DEFAULT_MAX_DROP, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True)
def compare(
    old: Path,
    new: Path,
    data: Path | None,
    backend: str,
    report: Path | None,
    max_accuracy_drop: float,
    threads: int,
) -> None:
    """A/B comparison of two model packages: accuracy, confusion, latency, size, shift."""
    from image.model.compare import CompareFailedError, compare_packages, format_comparison
    from image.model.report import write_report

    cmp = compare_packages(
        old, new, data=data, backend=backend, threads=threads, max_accuracy_drop=max_accuracy_drop
    )
    click.echo(format_comparison(cmp))
    if report is not None:
        html = write_report(cmp, report)
        click.echo(f"report: {html}")
    if not cmp.passed:
        raise CompareFailedError("; ".join(cmp.reasons))


@model.command()
@click.argument("package", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--color",
    type=click.Choice(["BGR", "RGB"]),
    default="BGR",
    show_default=True,
    help="Channel order of the frames the device feeds (cameras, videos, image folders: BGR).",
)
@click.option(
    "--top-k",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Classes a classifier's fused file outputs (softmax + top-k in the graph); 0: keep "
    "its outputs. Ignored for detection.",
)
@click.option(
    "--check",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="Reference images on which fused and plain file must agree (0: no check).",
)
@click.option(
    "--check-on",
    "backends",
    multiple=True,
    type=click.Choice(["onnxruntime", "openvino", "opencv"]),
    default=["onnxruntime"],
    show_default=True,
    help="Runtime to compare fused and plain file on (repeat for several).",
)
def fuse(package: Path, color: str, top_k: int, check: int, backends: tuple[str, ...]) -> None:
    """Add a fused ONNX file (pre-processing, softmax, top-k in the graph) for each ONNX file.

    The fused file takes the uint8 frame and is listed in model.json after its source; the
    device prefers it on onnxruntime, OpenVINO and OpenCV. It is checked against its source on
    the reference split first; if they disagree the package is left as it was.
    """
    from image.model.fuse import fuse_package

    for f in fuse_package(package, color=color, top_k=top_k, check=check, backends=backends):
        top = f", top-{f.top_k}" if f.top_k else ""
        click.echo(
            f"{package}: {f.source} -> {f.path} ({f.size} bytes, {f.color} frames{top}, "
            f"{f.images_checked} reference images checked on {', '.join(backends)})"
        )


@model.command()
@click.argument("package", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--compiled",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A *_edgetpu.tflite compiled elsewhere from this package's INT8 .tflite (checked).",
)
def edgetpu(package: Path, compiled: Path | None) -> None:
    """Add the Edge TPU file (*_edgetpu.tflite) to a LiteRT package, in place.

    Made with edgetpu_compiler (Coral's Debian package edgetpu-compiler, x86-64 only) when it is
    on PATH, else taken from --compiled. The device runs it when the Edge TPU delegate loads and
    the CPU .tflite otherwise.
    """
    from image.model.edgetpu import add_edgetpu_file

    f = add_edgetpu_file(package, compiled)
    how = f"checked {compiled}" if compiled else "compiled with edgetpu_compiler"
    click.echo(
        f"{package}: {f.path} ({how}; input {f.quantization and f.quantization.input_dtype})"
    )
