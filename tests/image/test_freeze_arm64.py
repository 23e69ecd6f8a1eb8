"""The arm64 runtime, frozen under qemu-user in a Debian arm64 root (slow, cold: minutes).

The runtime is frozen into the kiln build cache (``$EDGEKILN_CACHE/freeze``), where ``kiln
build`` of coral-usb-arm64 (tests/e2e/test_arm64_lifecycle.py), coral-devboard
(test_devboard_arm64.py) and the Jetson test's LiteRT stand-in (test_l4t.py) find the same
entry: one arm64 runtime frozen per change of the sources, not one per test file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image.build.identity import default_cache_dir
from image.freeze.foreign import ensure_root, frozen_env
from image.freeze.prebuilt import PrebuiltRuntimeError, check_prebuilt
from image.freeze.runtime import FrozenRuntime, freeze_runtime
from image.freeze.targets import resolve_target
from tests.arm64_runtimes import run_emulated

REPO = Path(__file__).resolve().parents[2]

# with tests/e2e/test_arm64_lifecycle.py and test_devboard_arm64.py (tests/scheduling.py)
pytestmark = [pytest.mark.xdist_group("arm64")]


@pytest.fixture(scope="session")
def coral(tmp_path_factory: pytest.TempPathFactory) -> tuple[FrozenRuntime, Path]:
    """The coral-usb-arm64 runtime (frozen, or from the kiln cache), and its arm64 root."""
    if shutil.which("qemu-aarch64-static") is None or shutil.which("debootstrap") is None:
        pytest.fail(
            "qemu-user-static and debootstrap are needed (tools/bootstrap.sh installs them)"
        )
    cache = Path(os.environ.get("EDGEKILN_TEST_CACHE") or default_cache_dir()) / "freeze"
    rt = freeze_runtime("coral-usb-arm64", tmp_path_factory.mktemp("coral"), cache_dir=cache)
    return rt, ensure_root(rt.arch, cache)


def _emulated(root: Path, exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["qemu-aarch64-static", "-L", str(root), str(exe), *args]
    env = frozen_env(exe)
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, env=env)


# A cold build (debootstrap, aarch64 wheels, PyInstaller emulated) takes minutes here.
@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_arm64_runtime_is_arm64_with_litert_only(coral: tuple[FrozenRuntime, Path]) -> None:
    rt, root = coral
    assert rt.arch == "aarch64"
    info = check_prebuilt(rt.path, resolve_target("coral-usb-arm64"))
    assert info.arch == "aarch64" and info.python == "3.11"
    assert not (rt.path / "_internal" / "openvino").exists()
    out = _emulated(root, rt.executable, "info", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["machine"] == "aarch64" and data["frozen"] is True
    assert [k for k, v in data["libraries"].items() if v] == ["litert"]
    # A camera without OpenCV: V4L2 through linuxpy, MJPEG through simplejpeg (YUYV: libyuv
    # where the build root has libyuv0, else numpy)
    camera = data["camera"]
    assert camera["v4l2"] == "linuxpy" and camera["mjpeg"] == "simplejpeg", camera
    # The same artifact is accepted as --prebuilt for the other LiteRT board, refused for x86.
    other = freeze_runtime("coral-devboard", rt.path.parent / "devboard", prebuilt=rt.path)
    assert other.digest == rt.digest
    with pytest.raises(PrebuiltRuntimeError, match="built for aarch64"):
        check_prebuilt(rt.path, resolve_target("generic-x86-64"))


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_arm64_frozen_runtime_loads_litert_under_qemu(coral: tuple[FrozenRuntime, Path]) -> None:
    """The frozen arm64 program imports ai_edge_litert's native library (``appliance backends``)."""
    rt, root = coral
    out = _emulated(root, rt.executable, "backends", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    status = {b["name"]: b for b in json.loads(out.stdout)}
    assert status["litert"]["ok"] is True, status["litert"]
    assert status["litert"]["detail"].startswith("ai_edge_litert ")
    assert not any(b["ok"] for name, b in status.items() if name != "litert")


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_arm64_frozen_runtime_passes_its_selftest_under_qemu(
    coral: tuple[FrozenRuntime, Path], tmp_path: Path
) -> None:
    """``appliance selftest`` of the frozen coral runtime on LiteRT (XNNPACK), emulated.

    Without an arm64 /proc/cpuinfo the interpreter dies with SIGSEGV under qemu-aarch64 7.2
    (tests/arm64_runtimes.py says why); with it, the reference split gives the accuracy the
    package records. The latency budget is scaled for emulation (about 300x slower).
    """
    rt, root = coral
    model = REPO / "recipes" / "models" / "inspect-primary"
    args = ("selftest", "--model", str(model), "--backend", "litert", "--budget-factor", "500")
    done = run_emulated(root, rt.executable, *args, "--json", workdir=tmp_path)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] is True and report["backend"] == "litert", report
    assert report["images"] == 256 and report["top1"] >= report["min_top1"], report


# Runs a command with the root's libyuv replaced by an empty file (a private mount namespace):
# only the copy bundled into the runtime can load then, as on a device whose root has no libyuv0.
WITHOUT_ROOT_LIBYUV = (
    'for f in "$1"/libyuv.so.0*; do mount --bind /dev/null "$f"; done; shift; exec "$@"'
)


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_arm64_frozen_runtime_converts_yuyv_with_its_own_libyuv(
    coral: tuple[FrozenRuntime, Path],
) -> None:
    """The arm64 runtime bundles the arm64 libyuv (from its freeze root) and loads that copy."""
    rt, root = coral
    bundled = sorted((rt.path / "_internal").rglob("libyuv.so*"))
    assert bundled, "libyuv not bundled into the arm64 runtime"
    elf = bundled[0].read_bytes()[:20]
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64
    libdir = root / "usr" / "lib" / "aarch64-linux-gnu"
    assert list(libdir.glob("libyuv.so.0*")), "the freeze root has no libyuv0"
    cmd = ["qemu-aarch64-static", "-L", str(root), str(rt.executable), "info", "--json"]
    hidden = ["unshare", "-m", "sh", "-c", WITHOUT_ROOT_LIBYUV, "sh", str(libdir), *cmd]
    done = subprocess.run(
        hidden,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=frozen_env(rt.executable),
    )
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    camera = json.loads(done.stdout)["camera"]
    assert camera["yuyv"] == "libyuv" and camera["v4l2"] == "linuxpy", camera
