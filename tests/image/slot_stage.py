"""Shared inputs of the model-step tests: real recipes and packages, a small base, the slot stage.

The base root is a small tarball and the runtime a placeholder folder (tests/image/test_build.py
builds those for real); the slot stage (mke2fs -d) is real and is read back with debugfs.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

from image.build.pipeline import Observer, Pipeline, StageResult
from image.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
MINI = (
    '[rootfs]\ntarball = "base.tar"\n\n'
    "[partitions]\nrootfs_mib = 980\ndata_mib = 40\nboot_mib = 40\n\n"
    "[runtime]\nextras = []\n"
)


class Recorder(Observer):
    """Keeps every finished stage, including the model steps that are not report stages."""

    def __init__(self) -> None:
        self.results: dict[str, StageResult] = {}

    def done(self, result: StageResult) -> None:
        self.results[result.name] = result


def base_tarball(path: Path) -> None:
    root = path.parent / "base-tree"
    for d in ("boot", "etc/systemd/system", "usr/lib/systemd/system", "var/log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "boot" / "vmlinuz-6.1.0-test-amd64").write_bytes(b"kernel")
    (root / "boot" / "initrd.img-6.1.0-test-amd64").write_bytes(b"initrd")
    (root / "etc" / "fstab").write_text("# fstab\n")
    with tarfile.open(path, "w") as tar:
        tar.add(root, arcname=".")


def copy_recipes(top: Path) -> Path:
    """The real recipes and reference packages under ``top``, a small base, and ``plain.toml``
    (the default target on that base)."""
    for toml in (REPO / "recipes").glob("*.toml"):
        shutil.copy(toml, top / toml.name)
    for name in ("inspect-primary", "inspect-fallback"):
        shutil.copytree(REPO / "recipes" / "models" / name, top / "models" / name)
    base_tarball(top / "base.tar")
    (top / "plain.toml").write_text('extends = "generic-x86-64.toml"\n' + MINI)
    return top


def run_slot(recipe: Path, cache: Path, out: Path) -> tuple[Pipeline, Recorder, Path]:
    """Run the base and slot stages of ``recipe`` (runtime: a placeholder folder)."""
    runtime = out / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    (runtime / "appliance").write_text("placeholder\n")
    rec = Recorder()
    pipe = Pipeline(load_recipe(recipe), out, cache_dir=cache, observer=rec)
    return pipe, rec, pipe.stage_slot(pipe.stage_base(), runtime, "runtime-digest")


def rdump(slot: Path, inside: str, dest: Path) -> Path:
    """Copy directory ``inside`` out of the slot image with debugfs."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debugfs", "-R", f"rdump {inside} {dest}", str(slot)], check=True, capture_output=True
    )
    return dest / Path(inside).name
