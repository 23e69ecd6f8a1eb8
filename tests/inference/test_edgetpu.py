"""The Edge TPU path: found by its USB identities, its file runs when the delegate loads, the
CPU file (with an alert that says why) when it does not.

No Coral and no libedgetpu here. The sysfs trees are built in ``tmp_path``; the model files
are the real reference package's, and its Edge TPU file is laid out as edgetpu_compiler writes
one (tests/inference/edgetpu_file.py). The only double is :class:`EdgeTpuStandIn`, in place of
libedgetpu (``EdgeTpuLibrary``: ``load_delegate('libedgetpu.so.1')`` and the interpreter that
runs through it); where the real library is asked for, its real absence is what is tested.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.inference.backends import BackendOptions, load_model
from appliance.inference.backends.litert import LiteRtBackend, interpreter_module
from appliance.inference.chain import Candidate, FallbackChain
from appliance.inference.edgetpu import EdgeTpu, find_edgetpus
from appliance.inference.package import load_package
from appliance.inference.pipeline import PipelineConfig, candidates
from image.model.edgetpu import add_edgetpu_file
from tests.inference.edgetpu_file import EdgeTpuStandIn, edgetpu_tflite

REF = Path(__file__).resolve().parents[2] / "recipes" / "models" / "inspect-primary"


def usb_device(root: Path, name: str, vendor: str, product: str) -> None:
    d = root / "bus" / "usb" / "devices" / name
    d.mkdir(parents=True)
    (d / "idVendor").write_text(vendor + "\n")
    (d / "idProduct").write_text(product + "\n")


def sysfs(tmp_path: Path, *devices: tuple[str, str, str]) -> Path:
    root = tmp_path / "sys"
    usb_device(root, "usb1", "1d6b", "0002")  # the root hub every machine has
    usb_device(root, "1-1", "046d", "0825")  # a webcam
    for name, vendor, product in devices:
        usb_device(root, name, vendor, product)
    return root


@pytest.fixture
def coral_pkg(tmp_path: Path) -> Path:
    """The reference package with its Edge TPU file, added by the builder's own command."""
    if not REF.is_dir():
        pytest.skip("recipes/models is not generated")
    pkg = Path(shutil.copytree(REF, tmp_path / "pkg"))
    compiled = tmp_path / "model_int8_edgetpu.tflite"
    compiled.write_bytes(edgetpu_tflite((pkg / "model_int8.tflite").read_bytes()))
    add_edgetpu_file(pkg, compiled)
    return pkg


def test_both_usb_identities_and_pcie_are_recognised(tmp_path: Path) -> None:
    assert find_edgetpus(tmp_path / "empty") == []
    assert find_edgetpus(sysfs(tmp_path / "a")) == []  # hubs and webcams are not Edge TPUs
    before = sysfs(tmp_path / "b", ("2-1", "1a6e", "089a"))
    assert find_edgetpus(before) == [EdgeTpu("usb", "2-1", "needs-firmware")]
    after = sysfs(tmp_path / "c", ("2-1", "18D1", "9302"))  # case as a kernel may print it
    (tpu,) = find_edgetpus(after)
    assert tpu.state == "ready" and tpu.delegate_device == "usb:0"
    assert "18d1:9302" in tpu.describe()
    (after / "class" / "apex" / "apex_0").mkdir(parents=True)
    assert [t.bus for t in find_edgetpus(after)] == ["usb", "pci"]
    # A device whose id files are missing or unreadable is skipped, not an error.
    (before / "bus" / "usb" / "devices" / "3-1").mkdir()
    assert len(find_edgetpus(before)) == 1


@pytest.mark.parametrize(("vendor", "product"), [("1a6e", "089a"), ("18d1", "9302")])
def test_the_edgetpu_file_runs_when_the_delegate_loads(
    coral_pkg: Path, tmp_path: Path, vendor: str, product: str
) -> None:
    library = EdgeTpuStandIn()
    root = sysfs(tmp_path, ("2-1", vendor, product))
    skipped: list[str] = []
    pkg = load_package(coral_pkg)
    opts = BackendOptions(sysfs_root=str(root))
    model = load_model(LiteRtBackend(library), pkg, None, opts, on_skip=skipped.append)
    assert model.file.path == "model_int8_edgetpu.tflite" and model.file.format == "edgetpu-tflite"
    assert model.device.startswith("Edge TPU usb:0: USB Accelerator") and skipped == []
    assert library.devices == ["usb:0"]
    # The accelerator's results are the INT8 model's, frame for frame.
    cpu = LiteRtBackend().load(pkg, "model_int8.tflite", BackendOptions())
    images, _ = pkg.load_reference()
    for img in images[:8]:
        x = img[None].astype(np.uint8)
        assert np.array_equal(model.run(x)[0], cpu.run(x)[0])


def test_the_cpu_interpreter_cannot_run_the_edgetpu_file(coral_pkg: Path) -> None:
    """Why the delegate matters: without it the compiled op is unresolved."""
    module, _ = interpreter_module()
    data = (coral_pkg / "model_int8_edgetpu.tflite").read_bytes()
    interp = module.Interpreter(model_content=data)
    with pytest.raises(RuntimeError, match="unresolved custom op: edgetpu-custom-op"):
        interp.allocate_tensors()


def _chain_events(pkg: Path, root: Path) -> tuple[FallbackChain, list]:
    events: list = []
    chain = FallbackChain(
        [Candidate(pkg, "litert")], BackendOptions(sysfs_root=str(root)), events.append
    )
    chain.next_runner()
    return chain, events


def test_no_accelerator_runs_the_cpu_file_with_an_alert(coral_pkg: Path, tmp_path: Path) -> None:
    chain, events = _chain_events(coral_pkg, sysfs(tmp_path))
    assert chain.runner is not None and chain.runner.model.file.path == "model.tflite"
    alert, loaded = events
    assert alert.kind == "fallback" and alert.alert
    assert "model_int8_edgetpu.tflite not used" in alert.reason
    assert "no Edge TPU found: no USB device 1a6e:089a or 18d1:9302" in alert.reason
    assert "running model.tflite" in alert.reason
    assert loaded.kind == "loaded" and "on litert (CPU" in loaded.reason


# ai_edge_litert's Delegate.__del__ trips over its own failed load (no _library attribute).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_delegate_that_fails_to_load_runs_the_cpu_file_with_an_alert(
    coral_pkg: Path, tmp_path: Path
) -> None:
    """A Coral is plugged in (before its firmware load) but libedgetpu is missing: the real
    ``load_delegate`` fails here, as it would on a device without libedgetpu1-std."""
    chain, events = _chain_events(coral_pkg, sysfs(tmp_path, ("2-1", "1a6e", "089a")))
    assert chain.runner is not None and chain.runner.model.file.path == "model.tflite"
    alert = events[0]
    assert alert.kind == "fallback" and alert.alert
    assert "Edge TPU delegate libedgetpu.so.1 could not be loaded" in alert.reason
    assert "libedgetpu1-std" in alert.reason and "running model.tflite" in alert.reason


def test_a_config_naming_the_edgetpu_file_tries_it_once(coral_pkg: Path, tmp_path: Path) -> None:
    """``model_file = "model_int8_edgetpu.tflite"`` and no accelerator: the named file fails
    once, then the package's own pick runs the CPU file without trying the Edge TPU file a
    second time (one fallback event for it, not two)."""
    cfg = PipelineConfig(
        source="npz:unused",
        model=str(coral_pkg),
        model_file="model_int8_edgetpu.tflite",
        backends=["litert"],
    )
    events: list = []
    chain = FallbackChain(
        candidates(cfg), BackendOptions(sysfs_root=str(sysfs(tmp_path))), events.append
    )
    chain.next_runner()
    assert chain.runner is not None and chain.runner.model.file.path == "model.tflite"
    about_edgetpu = [e for e in events if "model_int8_edgetpu.tflite" in e.reason]
    assert len(about_edgetpu) == 1, [e.reason for e in events]
    assert [e.kind for e in events] == ["fallback", "loaded"], [e.reason for e in events]
