"""The arm64 frozen runtimes the tests share, and how to run one under qemu-user for real.

Both arm64 runtimes are frozen into the kiln build cache (``$EDGEKILN_CACHE/freeze``), so one
freeze per change of the sources serves every test file that needs it.

Running inference under ``qemu-aarch64`` 7.2 needs an arm64 ``/proc/cpuinfo``. ONNX Runtime and
LiteRT's XNNPACK both detect the CPU with pytorch/cpuinfo, which reads ``/proc/cpuinfo`` and
``/sys/devices/system/cpu``; qemu-user passes the x86 host's ``/proc/cpuinfo`` through, cpuinfo
finds no ARM processor in it and the first session or interpreter dies with SIGSEGV. With the
file of a real arm64 CPU bound over it in a private mount namespace, the same frozen programs run
their self-tests (``tests/image/test_freeze_arm64.py``, ``tests/image/test_l4t.py``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from image.build.identity import default_cache_dir
from image.freeze.foreign import ensure_root, frozen_env
from image.freeze.runtime import FrozenRuntime, freeze_runtime
from image.freeze.targets import TargetSpec

#: what the Linux kernel of a Cortex-A76 class CPU (two of them) prints in /proc/cpuinfo
ARM64_CPUINFO = "".join(
    f"processor\t: {n}\n"
    "BogoMIPS\t: 50.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
    "asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\n"
    "CPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
    for n in range(2)
)

#: the Jetson test recipe's runtime: the jetson-orin target with ONNX Runtime, which freezes on
#: this host (TensorRT does not: image/freeze/targets.py)
JETSON_STANDIN = TargetSpec("jetson-orin", "aarch64", "onnxruntime")

# Binds $1 over /proc/cpuinfo in a private mount namespace, then runs the rest.
_WITH_CPUINFO = 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"'


def freeze_cache() -> Path:
    cache = Path(os.environ.get("EDGEKILN_TEST_CACHE") or default_cache_dir()) / "freeze"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def jetson_standin(outdir: Path) -> FrozenRuntime:
    """The jetson-orin runtime with ONNX Runtime (frozen, or from the kiln cache)."""
    cache = freeze_cache()
    with open(cache / ".jetson-test.lock", "w") as lock:  # one freeze at a time (xdist)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return freeze_runtime(JETSON_STANDIN, outdir, cache_dir=cache)


def arm64_root() -> Path:
    """The arm64 Debian root the runtimes are frozen in (their libc and loader under qemu-user)."""
    return ensure_root("aarch64", freeze_cache())


def run_emulated(
    root: Path, exe: Path, *args: str, workdir: Path, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run the frozen arm64 ``exe`` under qemu-user with an arm64 /proc/cpuinfo (needs root)."""
    cpuinfo = workdir / "cpuinfo"
    cpuinfo.write_text(ARM64_CPUINFO)
    qemu = shutil.which("qemu-aarch64-static") or "qemu-aarch64-static"
    cmd = ["unshare", "-m", "sh", "-c", _WITH_CPUINFO, "sh", str(cpuinfo), qemu, "-L", str(root)]
    return subprocess.run(
        [*cmd, str(exe), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=frozen_env(exe),
    )
