"""``appliance info``: what this runtime is and which back ends it can load."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys

import click

from appliance import __version__

BACKEND_MODULES = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "litert": "ai_edge_litert",
    "tflite_runtime": "tflite_runtime",
    "tensorrt": "tensorrt",
    "opencv": "cv2",
}


def _camera() -> dict[str, str]:
    """How this runtime reads cameras (imported here: numpy is not needed for the rest)."""
    from appliance.inference.sources import capabilities

    return capabilities()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def info(as_json: bool) -> None:
    """Print the runtime version, platform and the inference libraries present."""
    present = {
        name: importlib.util.find_spec(mod) is not None for name, mod in BACKEND_MODULES.items()
    }
    camera = _camera()
    data = {
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "frozen": bool(getattr(sys, "frozen", False)),
        "libraries": present,
        "camera": camera,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"appliance {data['version']} on {data['machine']} (python {data['python']})")
    for name, ok in present.items():
        click.echo(f"  {name:15} {'yes' if ok else 'no'}")
    for name, how in camera.items():
        click.echo(f"  camera {name:8} {how}")
