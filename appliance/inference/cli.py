"""``appliance selftest``, ``appliance run`` and ``appliance backends``."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import click

from appliance.inference.backends import BACKEND_NAMES
from appliance.inference.errors import SelftestFailedError

DEFAULT_MODEL = "/opt/edgekiln/models/primary"


@click.command()
@click.option(
    "--model",
    "model",
    default=DEFAULT_MODEL,
    show_default=True,
    type=click.Path(),
    help="Model package directory.",
)
@click.option(
    "--backend",
    type=click.Choice(BACKEND_NAMES),
    default=None,
    help="Back end (default: the first available one).",
)
@click.option(
    "--file", "file", default=None, help="A specific file of the package (e.g. model_int8.tflite)."
)
@click.option(
    "--limit", type=int, default=None, help="Evaluate a fixed subset of N reference images."
)
@click.option(
    "--budget-factor",
    type=float,
    default=1.0,
    show_default=True,
    help="Scale the latency budget for slower platforms (e.g. QEMU TCG).",
)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option(
    "--device",
    default=None,
    help="openvino: CPU/GPU/NPU; litert Edge TPU: usb:0; tensorrt: GPU index.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def selftest(
    *,
    model: str,
    backend: str | None,
    file: str | None,
    limit: int | None,
    budget_factor: float,
    threads: int,
    device: str | None,
    as_json: bool,
) -> None:
    """Run the reference split; exit 3 if accuracy or latency is below the gate."""
    from appliance.inference.selftest import run_selftest

    r = run_selftest(
        Path(model), backend, limit, budget_factor, file=file, threads=threads, device=device
    )
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
    else:
        click.echo(f"{r.model} {r.version} [{r.file}] on {r.backend}: {r.device}")
        click.echo(
            f"  top-1     {r.top1 * 100:6.2f} %  (expected {r.expected_top1 * 100:.2f} %, "
            f"gate {r.min_top1 * 100:.2f} %, {r.images} images)"
        )
        click.echo(
            f"  infer     p50 {r.infer_p50_ms:7.2f} ms  p95 {r.infer_p95_ms:7.2f} ms  "
            f"(budget {r.budget_infer_ms:.2f} ms)"
        )
        click.echo(
            f"  pre+infer+post p50 {r.total_p50_ms:7.2f} ms  p95 {r.total_p95_ms:7.2f} ms  "
            f"(budget {r.budget_total_ms:.2f} ms)"
        )
        for note in r.notes:
            click.echo(f"  note: {note}")
        click.echo("  PASS" if r.passed else "  FAIL: " + "; ".join(r.reasons))
    if not r.passed:
        raise SelftestFailedError(f"self-test failed: {'; '.join(r.reasons)}")


@click.command()
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Pipeline config (.json or .toml); other options override it.",
)
@click.option("--model", default=None, help="Primary model package directory.")
@click.option("--fallback-model", default=None, help="Fallback model package directory.")
@click.option(
    "--source", default=None, help="Camera/stream URL, video file, image folder or npz:FILE."
)
@click.option("--sink", default=None, help="JSON-lines result file (in the data partition).")
@click.option(
    "--backend",
    "backends",
    multiple=True,
    type=click.Choice(BACKEND_NAMES),
    help="Back-end preference, repeatable (default: onnxruntime, openvino, opencv).",
)
@click.option("--max-frames", type=int, default=None)
@click.option("--threads", type=int, default=None)
def run(
    *,
    config: str | None,
    model: str | None,
    fallback_model: str | None,
    source: str | None,
    sink: str | None,
    backends: tuple[str, ...],
    max_frames: int | None,
    threads: int | None,
) -> None:
    """Run the camera -> model -> results pipeline until interrupted or the source ends."""
    import msgspec

    from appliance.inference.errors import ConfigError
    from appliance.inference.pipeline import Pipeline, PipelineConfig, load_config

    base: dict[str, object] = msgspec.structs.asdict(load_config(Path(config))) if config else {}
    overrides = {
        "model": model,
        "fallback_model": fallback_model,
        "source": source,
        "sink": sink,
        "max_frames": max_frames,
        "threads": threads,
        "backends": list(backends) or None,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = msgspec.convert(base, PipelineConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(
            f"pipeline config: {exc} (give --model and --source, or --config)"
        ) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pipe = Pipeline(cfg)
    stats = pipe.run(stop, on_event=lambda e: click.echo(f"[{e.kind}] {e.reason}", err=True))
    click.echo(
        f"{stats.frames} frames ({stats.degraded_frames} degraded, "
        f"{stats.dropped} stale dropped); "
        f"total p50 {stats.percentile('total', 50):.2f} ms "
        f"p95 {stats.percentile('total', 95):.2f} ms"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True)
def backends(as_json: bool) -> None:
    """List the inference back ends and whether each can run here (and why not)."""
    from appliance.inference.backends import available

    status = available()
    if as_json:
        click.echo(json.dumps([s.__dict__ for s in status], indent=2))
        return
    for s in status:
        click.echo(f"  {s.name:12} {'yes' if s.ok else 'no '}  {s.detail}")
