"""Host-side helpers for the end-to-end tests: test recipes, builds, disks, USB sticks.

The test builds extend the QEMU profile ``recipes/qemu-x86-64.toml`` (the default image
``generic-x86-64`` without OpenCV, slots sized to fit, its latency budget factor for TCG) and
change only what a test bench needs: the version (and the model version in the reference
packages, so results say which build produced them), a v3 whose primary model disagrees with its
own reference labels, and the kernel console on the serial port (last ``console=``, so
``/dev/console`` is ttyS0) with the journal forwarded to it (the tests read the agent's own log
lines). The models are the reference packages as shipped (``recipes/models/inspect-*``), so the
health gate and the pipeline run what a device runs, under the profile's own budget factor.

Everything the device needs that a technician would set up on site (the camera, i.e. the
agent's pipeline config on data) is written into the data partition of a copy of the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BASE_RECIPE = REPO / "recipes" / "qemu-x86-64.toml"
REFERENCE_MODELS = REPO / "recipes" / "models"
#: the QEMU profile's [health] budget_factor (the agent's pipeline config uses the same factor)
PROFILE_BUDGET_FACTOR = 250.0
STICK_LABEL = "EK-UPDATE"
CMDLINE = (
    "console=tty0 console=ttyS0,115200 rootwait "
    "systemd.journald.forward_to_console=1 systemd.show_status=1 "
    # the QEMU profile's camera: the guest kernel's vivid V4L2 test driver (test_boot_disk.py
    # reads it; the other devices' camera config names the npz test pattern)
    "modules-load=vivid "
    # hang protection only: on a loaded host udev took over systemd's 90 s to link the data and
    # boot partitions once (recipes/qemu-x86-64.toml)
    "systemd.default_timeout_start_sec=600"
)
PIPELINE = {
    "model": "/opt/edgekiln/models/primary",
    "fallback_model": "/opt/edgekiln/models/fallback",
    # The reference split replayed at 5 frames/s: a test-pattern camera (the QEMU profile's
    # frozen runtime carries no OpenCV, so no V4L2 camera can be read in QEMU).
    "source": "npz:/opt/edgekiln/models/primary/reference.npz?loop=1&fps=5",
    "sink": "/data/edgekiln/results.jsonl",
    "backends": ["onnxruntime"],
    "budget_factor": PROFILE_BUDGET_FACTOR,
}


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run a host tool; the error carries its stderr."""
    try:
        return subprocess.run(cmd, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]
    except subprocess.CalledProcessError as exc:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({exc.returncode}): {exc.stderr.decode()[-2000:]}"
        ) from None


def make_models(root: Path, version: str, *, broken: bool = False) -> tuple[Path, Path]:
    """(primary, fallback): copies of the reference packages whose model version is ``version``
    (results name it); ``broken``: the primary runs but fails its reference check. Made once per
    directory, so the kiln cache keeps hitting across test sessions."""
    from tests.inference.fixtures import rewrite_manifest

    primary, fallback = root / "primary", root / "fallback"
    if (primary / "model.json").exists() and (fallback / "model.json").exists():
        return primary, fallback
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(REFERENCE_MODELS / "inspect-primary", primary)
    shutil.copytree(REFERENCE_MODELS / "inspect-fallback", fallback)
    rewrite_manifest(primary, version=version)
    rewrite_manifest(fallback, version=version)
    if broken:  # the model still runs, but disagrees with its own reference labels
        ref = np.load(primary / "reference.npz")
        classes = len(json.loads((primary / "model.json").read_text())["labels"])
        np.savez_compressed(
            primary / "reference.npz", images=ref["images"], labels=(ref["labels"] + 1) % classes
        )
    return primary, fallback


def write_recipe(
    workdir: Path,
    version: str,
    *,
    broken_model: bool = False,
    base_recipe: Path = BASE_RECIPE,
    cmdline: str = CMDLINE,
) -> Path:
    """The QEMU test profile recipe for ``version`` (see the module docstring); ``base_recipe``
    and ``cmdline``: another target's QEMU profile (arm64: recipes/coral-usb-arm64-qemu.toml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    # "reference-models": earlier sessions left tiny 16x16 packages in "models"
    primary, fallback = make_models(workdir / "reference-models", version, broken=broken_model)
    base = os.path.relpath(base_recipe, workdir)
    recipe = workdir / f"e2e-{version}.toml"
    recipe.write_text(
        f'extends = "{base}"\n'
        f'version = "{version}"\n'
        "[models]\n"
        f'primary = "{primary.relative_to(workdir)}"\n'
        f'fallback = "{fallback.relative_to(workdir)}"\n'
        "[kernel]\n"
        f'cmdline = "{cmdline}"\n'
        # the site-LAN API, as a recipe turns it on: test_site_lan.py reaches it through a
        # port forward (listens on the user-mode NIC's address, the default route's interface)
        "[lan]\n"
        "api = true\n"
        # test images only: the API's POST /v1/fault/hang-agent for the hung-agent watchdog
        # step of test_site_lan.py (a marker in the read-only slot; appliance/api/faults.py)
        "fault_injection = true\n"
    )
    return recipe


@dataclass(frozen=True)
class Build:
    """What ``kiln build`` produced for one version."""

    version: str
    image: Path
    bundle_file: Path | None  # None: built with ``--skip bundle``
    seconds: float

    @property
    def bundle(self) -> Path:
        """The full update bundle (a build made with ``--skip bundle`` has none)."""
        if self.bundle_file is None:
            raise AssertionError(f"{self.version} was built without its bundle (--skip bundle)")
        return self.bundle_file


#: What the e2e builds leave out by default: the zstd copy is for flashing, the VMs boot the
#: raw image (``kiln build --skip``). A build whose bundle no test installs also skips "bundle".
SKIP = ("compress",)


def build(recipe: Path, outdir: Path, version: str, skip: tuple[str, ...] = SKIP) -> Build:
    """``kiln build`` (the real CLI) into ``outdir``; the kiln cache makes rebuilds cheap."""
    import time

    kiln = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "kiln"
    cmd = [str(kiln) if kiln.exists() else "kiln", "build", str(recipe), "-o", str(outdir)]
    if skip:
        cmd += ["--skip", ",".join(skip)]
    t0 = time.monotonic()
    run(cmd, cwd=REPO, timeout=3600)
    return reuse_build(outdir, version, time.monotonic() - t0)


def reuse_build(outdir: Path, version: str, seconds: float = 0.0) -> Build:
    """The outputs a finished ``kiln build`` left in ``outdir``."""
    outputs = json.loads((outdir / "build-report.json").read_text())["outputs"]
    bundle = Path(outputs["bundle"]) if "bundle" in outputs else None
    return Build(version, Path(outputs["image"]), bundle, seconds)


def partitions(disk: Path) -> dict[str, tuple[int, int]]:
    """GPT partition name -> (byte offset, byte size) of a raw disk image."""
    table = json.loads(run(["sfdisk", "-J", str(disk)]).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return {
        p["name"]: (int(p["start"]) * sector, int(p["size"]) * sector) for p in table["partitions"]
    }


def _extract(disk: Path, name: str, out: Path) -> tuple[int, int]:
    offset, size = partitions(disk)[name]
    mib = 1024 * 1024
    run(
        ["dd", f"if={disk}", f"of={out}", "bs=1M", f"skip={offset // mib}",
         f"count={size // mib}", "conv=sparse", "status=none"]
    )  # fmt: skip
    return offset, size


def provision(image: Path, out: Path, pipeline: dict[str, object] | None = None) -> Path:
    """A copy of ``image`` with the agent's pipeline config on data (what the TUI's camera setup
    writes on site)."""
    run(["cp", "--sparse=always", "--reflink=auto", str(image), str(out)])
    data = out.with_suffix(".data.ext4")
    offset, _ = _extract(out, "data", data)
    config = out.with_suffix(".pipeline.json")
    config.write_text(json.dumps(pipeline or PIPELINE, indent=2))
    # debugfs's write never replaces a file (and still exits 0): remove a default one first
    script = out.with_suffix(".debugfs")
    script.write_text(f"rm /edgekiln/pipeline.json\nwrite {config} /edgekiln/pipeline.json\n")
    run(["debugfs", "-w", "-f", str(script), str(data)])
    written = run(["debugfs", "-R", "cat /edgekiln/pipeline.json", str(data)]).stdout
    assert json.loads(written) == json.loads(config.read_text()), "pipeline.json not written"
    run(
        ["dd", f"if={data}", f"of={out}", "bs=1M", f"seek={offset // (1024 * 1024)}",
         "conv=notrunc,sparse", "status=none"]
    )  # fmt: skip
    data.unlink()
    return out


def _partition_node(disk: Path, where: tuple[int, int]) -> str:
    """A QEMU ``--image-opts`` node: the byte range ``where`` of a qcow2 or raw disk."""
    offset, size = where
    if disk.suffix == ".qcow2":
        inner = f"file.driver=qcow2,file.file.driver=file,file.file.filename={disk}"
    else:
        inner = f"file.driver=file,file.filename={disk}"
    return f"driver=raw,offset={offset},size={size},{inner}"


def read_partition(disk: Path, where: tuple[int, int], out: Path) -> Path:
    """Copy one partition (byte range ``where``) of a qcow2 or raw disk to a raw file.

    ``-U`` (shared): works while QEMU runs the disk, giving what the guest has written so far.
    """
    out.unlink(missing_ok=True)
    node = _partition_node(disk, where)
    run(["qemu-img", "convert", "-U", "--image-opts", node, "-O", "raw", str(out)])
    return out


def write_partition(part: Path, disk: Path, where: tuple[int, int]) -> None:
    """Write a raw partition image back into a (powered-off) qcow2 or raw disk."""
    node = _partition_node(disk, where)
    run(["qemu-img", "convert", "-n", "-f", "raw", str(part), "--target-image-opts", node])


#: where scenario e puts a damaged primary package (path on the data partition)
BROKEN_ON_DATA = "/edgekiln/models/broken-primary"


def write_broken_primary(root: Path) -> Path:
    """A primary package whose model file is cut short (its manifest hash no longer
    matches; the file does not parse): what a failed copy of a model leaves behind."""
    primary, _ = make_models(root, "2.0.0")
    model = primary / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return primary


def same_bytes(
    disk: Path, where: tuple[int, int], image: Path, image_where: tuple[int, int]
) -> bool:
    """Whether a partition of ``disk`` holds the same bytes as a partition of ``image``."""
    cmd = ["qemu-img", "compare", "-U", "--image-opts", _partition_node(disk, where),
           _partition_node(image, image_where)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode not in (0, 1):
        raise AssertionError(f"qemu-img compare failed: {proc.stderr.decode()[-2000:]}")
    return proc.returncode == 0


def ext4_file(data: Path, path: str, workdir: Path) -> bytes | None:
    """A file from an ext4 partition image (journal replayed first, as the next mount would).

    Raises AssertionError when e2fsck cannot repair the copy (e.g. read while being written).
    """
    proc = subprocess.run(["e2fsck", "-fy", str(data)], capture_output=True, check=False)
    if proc.returncode >= 4:
        raise AssertionError(f"e2fsck of {data} failed: {proc.stdout.decode()[-2000:]}")
    out = workdir / Path(path).name
    out.unlink(missing_ok=True)
    run(["debugfs", "-R", f"dump {path} {out}", str(data)])
    return out.read_bytes() if out.exists() else None


def esp_grubenv(esp: Path, offset: int = 0) -> dict[str, str]:
    """The primary grubenv of a FAT ESP (at byte ``offset`` of ``esp``), as variables."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    text = run(["mtype", "-i", f"{esp}@@{offset}", "::/grub/grubenv"], env=env).stdout
    pairs = (line.split("=", 1) for line in text.decode().splitlines() if "=" in line)
    return {k: v for k, v in pairs if not k.startswith("#")}


def make_stick(bundle: Path, out: Path) -> Path:
    """A "USB stick": a FAT image labelled EK-UPDATE holding ``bundle``."""
    size_kib = bundle.stat().st_size // 1024 + 16 * 1024
    out.unlink(missing_ok=True)
    run(["mkfs.vfat", "-C", "-n", STICK_LABEL, str(out), str(size_kib)])
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    run(["mcopy", "-i", str(out), str(bundle), f"::/{bundle.name}"], env=env)
    return out


RESULTS = "/edgekiln/results.jsonl"  # paths on the data partition
EVENTS = "/edgekiln/events.jsonl"


def parse_results(text: bytes) -> list[dict[str, object]]:
    """JSON lines of the agent's results file (lines torn by a power cut are skipped)."""
    out = []
    for line in text.decode(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by the power cut
            continue
    return out


#: where the hang scenario puts a primary package whose model file never arrives (on data)
HUNG_ON_DATA = "/edgekiln/models/hung-primary"


def debugfs_script(image: Path, lines: list[str], workdir: Path) -> str:
    """Run debugfs commands (``-w``) on an ext4 image; returns its output.

    debugfs exits 0 even when a command fails: callers check the result they need.
    """
    script = workdir / "edit.debugfs"
    script.write_text("\n".join(lines) + "\n")
    try:
        return run(["debugfs", "-w", "-f", str(script), str(image)]).stdout.decode()
    finally:
        script.unlink()


def package_lines(package: Path, dest: str, *, fifos: tuple[str, ...] = ()) -> list[str]:
    """debugfs commands that copy a model package to ``dest`` on an ext4 image; the files named
    in ``fifos`` become named pipes instead (opening one with no writer blocks forever)."""
    lines = [f"mkdir {Path(dest).parent}", f"mkdir {dest}"]
    for f in sorted(package.iterdir()):
        if f.name in fifos:
            # debugfs 1.47's mknod links the whole path as one name in the current directory,
            # and leaves the mode 0: cd first, then name it, then give it rw-r--r--
            lines += [f"cd {dest}", f"mknod {f.name} p", f"sif {f.name} mode 010644", "cd /"]
        else:
            lines.append(f"write {f} {dest}/{f.name}")
    return lines


def set_grubenv(esp: Path, values: dict[str, str], workdir: Path) -> dict[str, str]:
    """Set variables in both grubenv copies of a FAT ESP image with ``grub-editenv`` (what a
    powered-off device's loader state is changed with); returns the primary copy after."""
    from appliance.slots.grub import ENV_BACKUP_PATH, ENV_PATH

    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    block = workdir / "grubenv"
    for path in (ENV_PATH, ENV_BACKUP_PATH):
        block.unlink(missing_ok=True)
        run(["mcopy", "-n", "-i", str(esp), f"::{path}", str(block)], env=env)
        run(["grub-editenv", str(block), "set", *(f"{k}={v}" for k, v in values.items())])
        run(["mcopy", "-o", "-i", str(esp), str(block), f"::{path}"], env=env)
    block.unlink()
    return esp_grubenv(esp)
