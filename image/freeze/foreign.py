"""Freeze ``appliance`` for a foreign CPU (arm64) on an x86-64 build host, under qemu-user.

Binary analysis and the bootloader must come from the target's own Python, so PyInstaller runs
as an arm64 program. Steps (each cached by a content hash in ``cache_dir``):

1. An arm64 Debian root: ``debootstrap --foreign --arch=arm64`` with Python 3.11, its shared
   libpython and libyuv (bundled into the runtime for YUYV frames); every downloaded .deb is
   unpacked with ``dpkg-deb -x`` (no second stage: that would need binfmt_misc, which build
   hosts often do not mount).
2. The target's Python packages as aarch64 wheels, installed by the host's pip with
   ``--platform manylinux_2_XX_aarch64 --only-binary=:all:`` and pinned to the versions of this
   venv, plus PyInstaller itself (its aarch64 wheel carries the arm64 bootloader).
3. The root's standard library, the wheels and the source snapshot byte-compiled by the host's
   Python 3.11 into a private ``PYTHONPYCACHEPREFIX`` (bytecode does not depend on the CPU), so
   the emulated interpreters load ``.pyc`` files instead of compiling every module they import
   in each of PyInstaller's subprocesses. PyInstaller compiles what it bundles from the sources
   itself, so the frozen tree does not depend on these files.
4. PyInstaller under ``qemu-aarch64-static -L ROOT`` called directly. Without binfmt_misc an
   emulated program cannot start other arm64 programs, so the children PyInstaller spawns are
   host shell wrappers: ``python`` (its isolated analysis subprocesses) re-enters the emulator,
   ``ldd`` runs the arm64 dynamic loader's ``--list`` under the emulator, ``ldconfig -p`` lists
   the root's libraries (:func:`ld_cache_listing`: how PyInstaller finds libyuv's ctypes load),
   and ``objcopy``/``objdump``/``strip`` are the root's arm64 binutils, emulated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from image import cache
from image.errors import BuildError
from image.freeze.pyinstaller import (
    PROGRAM,
    build_env,
    smoke_check,
    strip_debug_info,
    write_build_files,
)
from image.freeze.targets import TargetSpec

log = logging.getLogger(__name__)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# libyuv0 and libopenh264-7: the runtime converts YUYV camera frames with libyuv (NEON on arm64)
# and decodes RTSP H.264 with openh264, both loaded through ctypes; PyInstaller finds the root's
# copies by those loads (ld_cache_listing) and bundles them, as on x86-64.
ROOT_PACKAGES = ("python3.11", "libpython3.11", "binutils", "libyuv0", "libopenh264-7")
QEMU = {"aarch64": "qemu-aarch64-static"}
DEBIAN_ARCH = {"aarch64": "arm64"}
LOADER = {"aarch64": "lib/ld-linux-aarch64.so.1"}
LD_CACHE_ARCH = {"aarch64": "AArch64"}  # the flag ldconfig -p prints for the arch
PYTHON = "usr/bin/python3.11"
# Bookworm has glibc 2.36: any manylinux wheel up to that works on the device.
GLIBC_MAX = 36


class ForeignBuildError(BuildError):
    """The emulated (arm64) build failed."""


def _run(cmd: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise ForeignBuildError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd[:6])} ...\n{tail}"
        )
    return proc  # type: ignore[no-any-return]


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def ensure_root(arch: str, cache_dir: Path) -> Path:
    """An arm64 Debian root with Python 3.11 unpacked (cached by suite, mirror and packages)."""
    key = _digest([SUITE, MIRROR, ROOT_PACKAGES, arch])
    root = cache_dir / f"root-{DEBIAN_ARCH[arch]}-{key}"
    # Another build waits here and then finds the root complete (image/cache.py).
    with cache.filling(root, ".complete") as hit:
        if not hit:
            _make_root(arch, root)
    return root


def _make_root(arch: str, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    for tool in ("debootstrap", "dpkg-deb", QEMU[arch]):
        if shutil.which(tool) is None:
            raise ForeignBuildError(
                f"{tool} not found: apt-get install debootstrap qemu-user-static"
            )
    cmd = ["debootstrap", "--foreign", f"--arch={DEBIAN_ARCH[arch]}", "--variant=minbase"]
    cmd += [f"--include={','.join(ROOT_PACKAGES)}", SUITE, str(root), MIRROR]
    _run(cmd, "debootstrap --foreign")
    # The first stage unpacks only the "required" set; unpack the rest (python) without running
    # any maintainer script: the emulator needs files, not a configured system.
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"unpacking {deb.name}")
    if not (root / PYTHON).exists() or not (root / LOADER[arch]).exists():
        raise ForeignBuildError(f"{root}: no {PYTHON} or {LOADER[arch]} after unpacking")
    (root / ".complete").write_text("ok\n")


def requirements(spec: TargetSpec, src: Path) -> list[str]:
    """What to install for the runtime: declared and imported distributions, pinned to this venv.

    *src* is the source snapshot: packages ``appliance`` imports without declaring them (found by
    :func:`image.freeze.deps.imported`) are installed too, so the arm64 runtime carries what the
    x86-64 one does.
    """
    from image.freeze.deps import declared, imported

    names = {*declared(spec), *imported(src, spec), "pyinstaller"}
    pinned = []
    for name in sorted(names):
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def ensure_site(spec: TargetSpec, cache_dir: Path, src: Path) -> Path:
    """Install the target's packages as aarch64 wheels into a folder (host pip, no emulation)."""
    reqs = requirements(spec, src)
    site = cache_dir / f"site-{spec.arch}-{_digest([reqs, spec.arch])}"
    with cache.filling(site, ".complete") as hit:
        if not hit:
            _install_site(spec, reqs, site)
    return site


def _install_site(spec: TargetSpec, reqs: list[str], site: Path) -> None:
    if site.exists():
        shutil.rmtree(site)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site)]
    cmd += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    cmd += ["--platform", f"manylinux2014_{spec.arch}"]
    for minor in range(17, GLIBC_MAX + 1):
        cmd += ["--platform", f"manylinux_2_{minor}_{spec.arch}"]
    _run([*cmd, *reqs], f"pip install of {spec.arch} wheels")
    (site / ".complete").write_text("\n".join(reqs) + "\n")


def precompile(prefix: Path, *trees: Path) -> None:
    """Byte-compile *trees* with the host's Python into the pycache prefix *prefix*.

    Only a Python 3.11 host writes what the root's Python 3.11 can load (same bytecode magic);
    any other host skips this and the emulated interpreter compiles as it imports.
    """
    if sys.version_info[:2] != (3, 11):
        log.info("host Python is not 3.11: the emulated build compiles its own bytecode")
        return
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
    cmd = [sys.executable, "-m", "compileall", "-q", "-q", "-j", "0", *map(str, trees)]
    # Exit 1 only says some file did not compile (test data with syntax errors in the
    # standard library): the emulated interpreter compiles any such module itself.
    subprocess.run(cmd, env=env, capture_output=True, check=False)


def ld_cache_listing(root: Path, arch: str) -> str:
    """What ``ldconfig -p`` would print in *root*: its shared libraries by soname file name.

    PyInstaller resolves a library that the code loads through ctypes by name (libyuv's
    ``ctypes.CDLL("libyuv.so.0")``) only through ``LD_LIBRARY_PATH`` or this cache, so the
    listing names the root's copies (paths as the emulated program sees them).
    """
    lines = []
    for folder in (f"usr/lib/{arch}-linux-gnu", f"lib/{arch}-linux-gnu"):
        base = root / folder
        if not base.is_dir() or base.is_symlink():  # merged /usr: lib -> usr/lib
            continue
        for lib in sorted(base.glob("*.so*")):
            lines.append(f"\t{lib.name} (libc6,{LD_CACHE_ARCH[arch]}) => /{folder}/{lib.name}")
    return f"{len(lines)} libs found in cache `/etc/ld.so.cache'\n" + "\n".join(lines) + "\n"


def _wrappers(bindir: Path, root: Path, arch: str) -> Path:
    """Host shell scripts the emulated PyInstaller spawns instead of arm64 programs."""
    bindir.mkdir(parents=True)
    qemu = shutil.which(QEMU[arch]) or QEMU[arch]
    scripts = {
        "python": f'exec {qemu} -L {root} {root / PYTHON} -S "$@"\n',
        "ldd": f'exec {qemu} -L {root} {root / LOADER[arch]} --list "$@"\n',
        "ldconfig": f"cat {bindir / 'ldconfig.txt'}\n",
    }
    (bindir / "ldconfig.txt").write_text(ld_cache_listing(root, arch))
    # The host's binutils do not know arm64 ELF files (objcopy appends the archive to the
    # bootloader; objdump tells binaries from data): use the root's, emulated.
    for tool in ("objcopy", "objdump", "strip"):
        scripts[tool] = f'exec {qemu} -L {root} {root / "usr/bin" / tool} "$@"\n'

    for name, body in scripts.items():
        path = bindir / name
        path.write_text(f"#!/bin/sh\n{body}")
        path.chmod(0o755)
    return bindir / "python"


RUNNER = """\
import sys

# Children re-enter the emulator through this host wrapper (no binfmt_misc needed).
sys.executable = sys._base_executable = {python!r}
import PyInstaller.__main__

PyInstaller.__main__.run({args!r})
"""


def emulator(arch: str, root: Path) -> list[str]:
    """The command prefix that runs one of *root*'s programs on this host."""
    return [shutil.which(QEMU[arch]) or QEMU[arch], "-L", str(root)]


def frozen_env(exe: Path) -> dict[str, str]:
    """Environment to run a frozen onedir program under the emulator.

    PyInstaller's Linux bootloader restarts itself once with LD_LIBRARY_PATH pointing into
    ``_internal``; without binfmt_misc that re-exec of an arm64 file fails ("Syntax error: word
    unexpected"), so the emulated run starts with the state the restart would set.
    """
    env = dict(os.environ)
    env.update(
        _PYI_ARCHIVE_FILE=str(exe),
        _PYI_PARENT_PROCESS_LEVEL="-1",
        _PYI_LINUX_PROCESS_NAME=exe.name,
        LD_LIBRARY_PATH=str(exe.parent / "_internal"),
    )
    return env


def build(
    spec: TargetSpec,
    workdir: Path,
    epoch: str,
    *,
    cache_dir: Path | None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Freeze *spec* for its foreign CPU in *workdir*; return the onedir tree (smoke-tested)."""
    say = progress or (lambda msg: log.info("%s", msg))

    if spec.arch not in QEMU:
        raise ForeignBuildError(f"no emulator known for {spec.arch}")
    store = cache_dir if cache_dir is not None else workdir / "foreign"
    store.mkdir(parents=True, exist_ok=True)
    say(f"{spec.name}: {DEBIAN_ARCH[spec.arch]} Debian root (debootstrap --foreign, cached)")
    root = ensure_root(spec.arch, store)
    say(f"{spec.name}: {spec.arch} wheels (pip --platform, cached)")
    site = ensure_site(spec, store, workdir / "src" / "appliance")
    spec_file = write_build_files(spec, workdir)  # the source snapshot is in workdir/src
    env = build_env(epoch, workdir / "pyi-config")
    host_path = env.get("PATH", "/usr/bin:/bin")
    python = _wrappers(workdir / "bin", root, spec.arch)
    pycache = workdir / "pycache"
    say(f"{spec.name}: byte-compiling the root's standard library and the wheels on the host")
    precompile(pycache, root / "usr" / "lib" / "python3.11", site, workdir / "src")
    env.update(
        PYTHONPYCACHEPREFIX=str(pycache),
        PATH=f"{workdir / 'bin'}:{host_path}",
        PYTHONPATH=f"{workdir / 'src'}:{site}",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONNOUSERSITE="1",
    )
    args = ["--noconfirm", "--clean", "--log-level", "WARN", "--distpath", str(workdir / "dist")]
    args += ["--workpath", str(workdir / "build"), str(spec_file)]
    runner = workdir / "run_pyinstaller.py"
    runner.write_text(RUNNER.format(python=str(python), args=args))
    say(f"{spec.name}: PyInstaller under {QEMU[spec.arch]} (slow: minutes)")
    _run([str(python), str(runner)], f"PyInstaller under {QEMU[spec.arch]}", env=env)
    tree = workdir / "dist" / PROGRAM
    if spec.strip:
        strip_debug_info(tree, [str(workdir / "bin" / "strip")])
    exe = tree / PROGRAM
    smoke_check(exe, spec, runner=emulator(spec.arch, root), env=frozen_env(exe))
    return tree
