"""Frozen runtimes: real PyInstaller builds per x86-64 target, cache, reproducibility, checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image.freeze.prebuilt import PrebuiltRuntimeError, check_prebuilt, elf_machine
from image.freeze.pyinstaller import render_spec
from image.freeze.report import differing, file_digests, package_of, size_report, tree_digest
from image.freeze.runtime import (
    FreezeError,
    FrozenRuntime,
    freeze_runtime,
    snapshot_sources,
    target_spec,
)
from image.freeze.targets import UnknownTargetError, resolve_target

REPO = Path(__file__).resolve().parents[2]

BIN = Path(sys.executable).parent
OPENVINO_NEEDED = (
    "libopenvino_onnx_frontend.so",
    "libopenvino_ir_frontend.so",
    "libopenvino_intel_cpu_plugin.so",
)


@pytest.fixture(scope="session")
def freeze_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("freeze-cache")


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One snapshot of the appliance sources for every build of the session.

    Other work in the same checkout may change files while the suite runs; the cache tests
    must compare builds of the same sources.
    """
    root = tmp_path_factory.mktemp("sources")
    snapshot_sources(root)
    return root


@pytest.fixture(scope="session")
def generic(
    tmp_path_factory: pytest.TempPathFactory, freeze_cache: Path, sources: Path
) -> FrozenRuntime:
    out = tmp_path_factory.mktemp("generic")
    return freeze_runtime("generic-x86-64", out, cache_dir=freeze_cache, source_root=sources)


def shared_freeze_cache() -> Path:
    """The kiln cache's ``freeze/`` (``$EDGEKILN_TEST_CACHE`` or the user's), as test_build.py."""
    from image.build.identity import default_cache_dir

    return Path(os.environ.get("EDGEKILN_TEST_CACHE") or default_cache_dir()) / "freeze"


@pytest.fixture(scope="session")
def openvino_rt(tmp_path_factory: pytest.TempPathFactory, sources: Path) -> FrozenRuntime:
    """The intel-openvino runtime from the kiln cache's ``freeze/``: the entry the
    intel-openvino QEMU profile's build takes (tests/e2e/test_openvino_vivid.py) and
    test_freeze_camera.py's, filled once under its lock (image/cache.py), so a run of the suite
    freezes it once."""
    out = tmp_path_factory.mktemp("openvino")
    cache_dir = shared_freeze_cache()
    return freeze_runtime("intel-openvino", out, cache_dir=cache_dir, source_root=sources)


@pytest.fixture(scope="session")
def reference_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference model package if generated (tools/refmodel), else a real tiny ONNX one."""
    ref = Path(__file__).resolve().parents[2] / "recipes" / "models" / "inspect-primary"
    dest = tmp_path_factory.mktemp("model")
    if (ref / "model.json").exists():
        from appliance.inference.package import load_package

        copy = Path(shutil.copytree(ref, dest / ref.name))  # private: it may be regenerated
        load_package(copy)
        return copy
    from tests.inference.fixtures import make_package

    return make_package(dest / "tiny")


def _selftest(exe: Path, package: Path, backend: str) -> dict[str, object]:
    # Accuracy is gated; latency is not (wall clock on a shared machine): a huge budget factor.
    args = ["selftest", "--model", str(package), "--backend", backend, "--budget-factor", "1000"]
    out = subprocess.run(
        [str(exe), *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _info(exe: Path) -> dict[str, object]:
    out = subprocess.run([str(exe), "info", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# --- targets and spec: pure ---------------------------------------------------------------------


def test_targets_resolve_by_name_and_backend() -> None:
    assert resolve_target("onnxruntime").name == "generic-x86-64"
    assert resolve_target("openvino").name == "intel-openvino"
    assert resolve_target("coral-devboard").arch == "aarch64"
    with pytest.raises(UnknownTargetError, match="choose one of"):
        resolve_target("pdp-11")


def test_each_target_excludes_every_other_backend() -> None:
    coral = resolve_target("coral-usb-arm64")
    # ai_edge_litert drags openvino in unless it is excluded by name.
    assert "openvino" in coral.excluded_modules
    assert "ai_edge_litert" not in coral.excluded_modules
    generic = resolve_target("generic-x86-64")
    assert {"openvino", "cv2", "ai_edge_litert", "tensorrt", "image"} <= set(
        generic.excluded_modules
    )
    with_cv = generic.with_extras(("opencv",))
    assert "cv2" not in with_cv.excluded_modules
    assert "cv2" in with_cv.included_modules


def test_spec_is_valid_python_with_hooks_and_excludes(tmp_path: Path) -> None:
    spec = resolve_target("intel-openvino")
    text = render_spec(spec, tmp_path / "entry.py", tmp_path)
    compile(text, "appliance.spec", "exec")
    assert "'intel_cpu'" in text
    assert "'onnxruntime'" in text  # excluded: the OpenVINO runtime does not carry it
    assert 'collect_submodules("appliance")' in text


def test_recipe_backend_overrides_target_default() -> None:
    from image.recipe import load_recipe

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    loaded = load_recipe(recipes / "intel-openvino.toml", check_files=False)
    assert target_spec(loaded).backend == "openvino"


def test_jetson_is_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(FreezeError, match="--prebuilt"):
        freeze_runtime("jetson-orin", tmp_path / "out")


# --- report and digest: pure over real files ---------------------------------------------------


def test_tree_digest_sees_content_and_mode_but_not_time(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "lib.so"
    f.write_bytes(b"x" * 10)
    first = file_digests(tmp_path)
    os.utime(f, (1, 1))
    assert file_digests(tmp_path) == first
    f.chmod(0o755)
    assert differing(first, file_digests(tmp_path)) == ["a/lib.so"]
    before = tree_digest(tmp_path)
    f.write_bytes(b"y" * 10)
    assert tree_digest(tmp_path) != before


def test_package_attribution() -> None:
    assert package_of("_internal/opencv_python_headless.libs/libavcodec.so") == "cv2"
    assert package_of("_internal/numpy.libs/libopenblas.so") == "numpy"
    assert package_of("_internal/onnxruntime/capi/x.so") == "onnxruntime"
    assert package_of("_internal/libpython3.11.so.1.0") == "python (libpython)"
    assert package_of("appliance") == "bootloader (executable)"


# --- real builds (x86-64 targets) ---------------------------------------------------------------


@pytest.mark.slow
def test_generic_runtime_carries_only_onnxruntime(generic: FrozenRuntime) -> None:
    info = _info(generic.executable)
    assert info["frozen"] is True
    libs = info["libraries"]
    assert isinstance(libs, dict)
    assert libs["onnxruntime"] is True
    assert not any(v for k, v in libs.items() if k != "onnxruntime")
    internal = generic.path / "_internal"
    assert not (internal / "openvino").exists()
    assert not (internal / "cv2").exists()
    # The size goal of issue 21: the default generic runtime (no OpenCV) is at most 150 MiB.
    assert generic.size.total_bytes <= 150 * 2**20
    report = json.loads((generic.path.parent / "appliance-size.json").read_text())
    assert report["total_bytes"] == generic.size.total_bytes
    assert "onnxruntime" in report["packages"]
    assert "MB" in (generic.path.parent / "appliance-size.txt").read_text()


@pytest.mark.slow
def test_openvino_runtime_has_frontends_and_cpu_plugin(openvino_rt: FrozenRuntime) -> None:
    libs = {
        p.name.split(".so")[0] + ".so"
        for p in (openvino_rt.path / "_internal/openvino/libs").iterdir()
    }
    assert set(OPENVINO_NEEDED) <= libs
    # Conversion front ends are not needed on a device.
    assert "libopenvino_tensorflow_frontend.so" not in libs
    info = _info(openvino_rt.executable)
    assert info["libraries"] == {
        "litert": False,
        "onnxruntime": False,
        "opencv": False,
        "openvino": True,
        "tensorrt": False,
        "tflite_runtime": False,
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_frozen_selftest_passes_on_its_backend(
    backend: str, generic: FrozenRuntime, openvino_rt: FrozenRuntime, reference_package: Path
) -> None:
    rt = generic if backend == "onnxruntime" else openvino_rt
    report = _selftest(rt.executable, reference_package, backend)
    assert report["passed"] is True
    assert report["backend"] == backend
    assert isinstance(report["images"], int) and report["images"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_frozen_pipeline_publishes_what_the_source_tree_does(
    backend: str,
    generic: FrozenRuntime,
    openvino_rt: FrozenRuntime,
    reference_package: Path,
    tmp_path: Path,
) -> None:
    """``appliance run`` frozen: the OpenVINO runtime has no OpenCV, so its frames take the
    numpy pre-processing into the infer request's own tensor (zero-copy ``run_frame``)."""
    from appliance.inference.package import load_package
    from appliance.inference.pipeline import Pipeline, PipelineConfig

    rt = generic if backend == "onnxruntime" else openvino_rt
    pkg = load_package(reference_package)
    assert pkg.manifest.reference is not None
    source = f"npz:{pkg.root / pkg.manifest.reference.split}"
    frozen_out = tmp_path / "frozen.jsonl"
    args = ["run", "--model", str(reference_package), "--source", source]
    args += ["--backend", backend, "--sink", str(frozen_out), "--max-frames", "48"]
    done = subprocess.run([str(rt.executable), *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    tree_out = tmp_path / "tree.jsonl"
    cfg = PipelineConfig(
        model=str(reference_package),
        source=source,
        backends=[backend],
        sink=str(tree_out),
        max_frames=48,
    )
    Pipeline(cfg).run()

    def results(path: Path) -> list[dict[str, object]]:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in records if r["type"] == "result"]

    frozen, tree = results(frozen_out), results(tree_out)
    assert len(frozen) == len(tree) == 48
    for f, t in zip(frozen, tree, strict=True):
        assert f["backend"] == t["backend"] == backend and not f.get("degraded")
        assert f["frame"] == t["frame"]
        ft, tt = f["top"], t["top"]
        assert isinstance(ft, list) and isinstance(tt, list)
        assert [c["index"] for c in ft] == [c["index"] for c in tt]
        for a, b in zip(ft, tt, strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-5  # numpy vs OpenCV pre-processing


@pytest.mark.slow
def test_generic_runtime_is_stripped(generic: FrozenRuntime) -> None:
    """Bundled ELF files lose their debug info (a third of the size) and still load."""
    import sysconfig

    name = sysconfig.get_config_var("INSTSONAME")
    source = Path(sysconfig.get_config_var("LIBDIR")) / name
    frozen = generic.path / "_internal" / name
    assert b".debug_info" not in frozen.read_bytes()
    if b".debug_info" in source.read_bytes():
        assert frozen.stat().st_size < source.stat().st_size


@pytest.mark.slow
def test_rebuild_with_no_change_comes_from_cache(
    generic: FrozenRuntime, freeze_cache: Path, sources: Path, tmp_path: Path
) -> None:
    again = freeze_runtime(
        "onnxruntime", tmp_path / "again", cache_dir=freeze_cache, source_root=sources
    )
    assert again.cached
    assert again.digest == generic.digest
    assert again.cache_key == generic.cache_key


@pytest.mark.slow
def test_cli_uses_the_cache_and_reports_size(
    generic: FrozenRuntime, freeze_cache: Path, sources: Path, tmp_path: Path
) -> None:
    # The default recipe and the QEMU profile: the generic target without OpenCV, i.e. exactly
    # the `generic` fixture, whose tree holds no cv2 (test_generic_runtime_carries_only_...).
    for name in ("generic-x86-64", "qemu-x86-64"):
        recipe = Path(__file__).resolve().parents[2] / "recipes" / f"{name}.toml"
        out = subprocess.run(
            [
                str(BIN / "kiln"),
                "freeze",
                str(recipe),
                "-o",
                str(tmp_path / name),
                "--cache-dir",
                str(freeze_cache),
                "--source",
                str(sources),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "from cache" in out.stdout
        assert generic.digest in out.stdout
        assert (tmp_path / name / "appliance" / "appliance").is_file()
        assert not (tmp_path / name / "appliance" / "_internal" / "cv2").exists()


@pytest.mark.slow
def test_two_builds_in_different_folders_are_identical(tmp_path: Path) -> None:
    """``kiln freeze --verify-repro``: two uncached builds, then a tree comparison."""
    out = subprocess.run(
        [str(BIN / "kiln"), "freeze", "generic-x86-64", "--verify-repro"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "identical" in out.stdout


# --- prebuilt checks on real runtimes -------------------------------------------------------------


@pytest.mark.slow
def test_prebuilt_checks_accept_a_fitting_runtime(generic: FrozenRuntime, tmp_path: Path) -> None:
    info = check_prebuilt(generic.path, resolve_target("generic-x86-64"))
    assert info.arch == "x86_64"
    assert info.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    rt = freeze_runtime("generic-x86-64", tmp_path / "o", prebuilt=generic.path)
    assert rt.digest == generic.digest


@pytest.mark.slow
def test_prebuilt_checks_refuse_wrong_arch_backend_and_abi(
    generic: FrozenRuntime, tmp_path: Path
) -> None:
    assert elf_machine(generic.executable) == "x86_64"
    with pytest.raises(PrebuiltRuntimeError, match="needs aarch64"):
        check_prebuilt(generic.path, resolve_target("coral-usb-arm64"))
    with pytest.raises(PrebuiltRuntimeError, match="back end openvino"):
        check_prebuilt(generic.path, resolve_target("intel-openvino"))
    copy = tmp_path / "rt"
    shutil.copytree(generic.path, copy, symlinks=True)
    ext = next((copy / "_internal").rglob("*.cpython-311-x86_64-linux-gnu.so"))
    ext.rename(ext.with_name(ext.name.replace("cpython-311", "cpython-312")))
    with pytest.raises(PrebuiltRuntimeError, match="cpython-312"):
        check_prebuilt(copy, resolve_target("generic-x86-64"))
    (copy / "appliance").write_bytes(b"#!/bin/sh\n")
    with pytest.raises(PrebuiltRuntimeError, match="not an ELF"):
        check_prebuilt(copy, resolve_target("generic-x86-64"))


@pytest.mark.slow
def test_prebuilt_runtime_that_cannot_read_a_camera_is_refused(
    generic: FrozenRuntime, tmp_path: Path
) -> None:
    """A onedir runtime frozen without linuxpy and simplejpeg (a real PyInstaller build of a
    program that does not import them, as a Jetson's Python without edgekiln[camera] gives) is
    refused: its V4L2 camera would be a ``source_lost`` alert forever. The fitting runtime's
    archive holds both."""
    from image.freeze.prebuilt import frozen_modules
    from image.freeze.targets import CAMERA_MODULES

    assert set(CAMERA_MODULES) <= frozen_modules(generic.executable)
    program = tmp_path / "appliance.py"
    program.write_text("import json\nprint(json.dumps({'frozen': True}))\n")
    argv = [str(BIN / "pyinstaller"), "--onedir", "--noconfirm", "--log-level", "WARN"]
    argv += ["--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "work")]
    argv += ["--specpath", str(tmp_path), str(program)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    runtime = tmp_path / "dist" / "appliance"
    with pytest.raises(PrebuiltRuntimeError, match="cannot read a V4L2 camera") as refused:
        check_prebuilt(runtime, resolve_target("generic-x86-64"))
    assert "linuxpy.video.device, simplejpeg not frozen in" in str(refused.value)
    assert "kiln freeze generic-x86-64" in str(refused.value)


def test_size_report_attributes_real_files(tmp_path: Path) -> None:
    internal = tmp_path / "_internal"
    (internal / "numpy.libs").mkdir(parents=True)
    (internal / "numpy.libs" / "libopenblas.so").write_bytes(b"\0" * 3000)
    (internal / "libpython3.11.so.1.0").write_bytes(b"\0" * 2000)
    (tmp_path / "appliance").write_bytes(b"\0" * 1000)
    report = size_report(tmp_path, "t")
    assert report.total_bytes == 6000
    assert list(report.packages) == ["numpy", "python (libpython)", "bootloader (executable)"]
    assert report.largest_files[0] == ("_internal/numpy.libs/libopenblas.so", 3000)


@pytest.mark.integration
def test_frozen_tui_starts_switches_and_quits_under_tmux(
    generic: FrozenRuntime, tmp_path: Path
) -> None:
    """The technician TUI of the frozen default runtime paints at 80x24 and quits cleanly."""
    import uuid

    from tests.tui.test_tmux import session_alive, tmux, wait_screen

    model = tmp_path / "model"
    shutil.copytree(REPO / "recipes" / "models" / "inspect-primary", model)
    session = f"edgekiln-frozen-tui-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit-code"
    command = (
        f"EDGEKILN_DEMO_MODEL={model} TERM=vt220 NO_COLOR=1 {generic.executable} tui --demo "
        f"--demo-dir {tmp_path / 'demo'}; echo $? > {done}"
    )
    tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", session, command)
    try:
        screen = wait_screen(session, "running A, committed A", timeout=90)
        assert "[1 Status]" in screen
        tmux("send-keys", "-t", session, "6")
        wait_screen(session, "[6 Slots]")
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 30
        while session_alive(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not session_alive(session)
        assert done.read_text().strip() == "0"
    finally:
        if session_alive(session):
            tmux("kill-session", "-t", session)
