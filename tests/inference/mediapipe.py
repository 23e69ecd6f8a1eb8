"""Fetch the mediapipe 0.10.14 wheel once (pip download --no-deps) and unpack its .tflite files.

Real third-party models nobody here wrote. The cache (``~/.cache/edgekiln/mediapipe`` or
``$EDGEKILN_CACHE/mediapipe``) is reused across runs.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import zipfile
from pathlib import Path

VERSION = "0.10.14"


def cache_dir() -> Path:
    base = Path(os.environ.get("EDGEKILN_CACHE", Path.home() / ".cache" / "edgekiln"))
    return base / "mediapipe"


def tflite_models() -> dict[str, Path]:
    """name -> path of every .tflite in the wheel (downloads on first use)."""
    root = cache_dir()
    out = root / f"models-{VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as lock:  # another test worker may be filling it
        fcntl.flock(lock, fcntl.LOCK_EX)
        _fill(root, out)
    return {p.stem: p for p in sorted(out.glob("*.tflite"))}


def _fill(root: Path, out: Path) -> None:
    if not (out / ".done").exists():
        wheels = list(root.glob(f"mediapipe-{VERSION}-*.whl"))
        if not wheels:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    f"mediapipe=={VERSION}",
                    "-d",
                    str(root),
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
            wheels = list(root.glob(f"mediapipe-{VERSION}-*.whl"))
        out.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            for name in z.namelist():
                if name.endswith(".tflite"):
                    (out / Path(name).name).write_bytes(z.read(name))
        (out / ".done").touch()
