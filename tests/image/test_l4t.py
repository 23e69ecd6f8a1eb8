"""Jetson (L4T) images: slot images from a user-supplied L4T root, checked with host tools.

NVIDIA's sample root filesystem cannot be redistributed, so the test makes a small stand-in
tarball with its layout (``/etc/nv_tegra_release``, ``/usr/sbin/nvbootctrl``,
``/boot/extlinux/extlinux.conf`` as NVIDIA writes it, ``/boot/Image``, ``/lib/modules/...``).
The full build puts the real arm64 frozen runtime on top (image.freeze under qemu-user, cached
across runs in the build cache; the test recipe uses the onnxruntime back end, which freezes
here, because TensorRT does not).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from image.build.l4t import SLOT_ARGS, L4TError, check_recipe, check_root, render_extlinux
from image.recipe import load_recipe
from tests.arm64_runtimes import arm64_root, jetson_standin, run_emulated
from tests.image.conftest import make_model_package

KILN = Path(sys.executable).parent / "kiln"
REPO = Path(__file__).resolve().parents[2]

EXTLINUX = """TIMEOUT 30
DEFAULT primary

MENU TITLE L4T boot options

LABEL primary
      MENU LABEL primary kernel
      LINUX /boot/Image
      FDT /boot/dtb/kernel_tegra234-p3737-0000+p3701-0000-nv.dtb
      INITRD /boot/initrd
      APPEND ${cbootargs} root=PARTUUID=2534d15b-e6fb-4265-b913-e042ab311f4f rw rootwait \
rootfstype=ext4 mminit_loglevel=4 console=ttyTCU0,115200 firmware_class.path=/etc/firmware \
fbcon=map:0 nospectre_bhb video=efifb:off console=tty0
"""


# NVIDIA's R36 root (Ubuntu 22.04) has glibc 2.35; the arm64 runtime frozen here (Debian 12's
# root) needs 2.36, so the stand-in records Debian's libc6 and a test refuses Ubuntu's.
DEBIAN_LIBC = "2.36-9+deb12u13"
UBUNTU_LIBC = "2.35-0ubuntu3.8"


def make_l4t_tarball(path: Path, *, l4t: bool = True, libc: str = DEBIAN_LIBC) -> Path:
    """A small root with the L4T layout, packed as NVIDIA packs it (tar + bzip2)."""
    root = path.parent / f"{path.name}-tree"
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "usr/sbin", "boot/extlinux"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "lib").symlink_to("usr/lib")
    modules = root / "usr/lib/modules/5.15.148-tegra"
    modules.mkdir(parents=True)
    (modules / "modules.dep").write_text("kernel/drivers/media/usb/uvc/uvcvideo.ko:\n")
    (root / "boot/Image").write_bytes(b"ARMd" * 4096)
    (root / "boot/initrd").write_bytes(b"\x1f\x8b" + b"initrd" * 1000)
    (root / "boot/extlinux/extlinux.conf").write_text(EXTLINUX)
    (root / "etc/fstab").write_text("/dev/root / ext4 defaults 0 1\n")
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(
        f"Package: libc6-dev\nVersion: 1:9.9-1\n\nPackage: libc6\nStatus: install ok installed\n"
        f"Architecture: arm64\nVersion: {libc}\n\n"
    )
    if l4t:
        (root / "etc/nv_tegra_release").write_text(
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
            "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
        )
        nv = root / "usr/sbin/nvbootctrl"
        nv.write_text("#!/bin/sh\necho 'stand-in: not NVIDIA nvbootctrl' >&2\nexit 1\n")
        nv.chmod(0o755)
    with tarfile.open(path, "w:bz2") as tar:
        tar.add(root, arcname=".")
    return path


def recipes(tmp: Path, *, tarball: str | None = "l4t.tbz2", libc: str = DEBIAN_LIBC) -> Path:
    """The real recipes, small model packages, and a jetson recipe on the stand-in tarball."""
    out = tmp / "recipes"
    out.mkdir(exist_ok=True)
    for toml in (REPO / "recipes").glob("*.toml"):
        (out / toml.name).write_text(toml.read_text())
    make_model_package(out / "models" / "inspect-primary")
    make_model_package(out / "models" / "inspect-fallback")
    make_l4t_tarball(out / "l4t.tbz2", libc=libc)
    body = 'extends = "jetson-orin.toml"\nversion = "1.0.0"\n\n[target]\n'
    body += 'name = "jetson-orin"\narch = "arm64"\nbackend = "onnxruntime"\nloader = "l4t"\n\n'
    body += "[partitions]\nrootfs_mib = 1300\ndata_mib = 40\n\n"
    # The stand-in model packages are not models: no optimisation (tested in tests/models).
    body += '[models]\nprimary = "models/inspect-primary"\nfallback = "models/inspect-fallback"\n'
    body += "optimise = false\nfuse = false\n"
    if tarball:
        body += f'\n[rootfs]\ntarball = "{tarball}"\n'
    (out / "jetson-test.toml").write_text(body)
    return out


# -- fast: the recipe field, the tarball's layout, extlinux.conf ---------------------------------


def test_missing_tarball_names_the_recipe_and_the_field(tmp_path: Path) -> None:
    top = recipes(tmp_path, tarball=None)
    loaded = load_recipe(top / "jetson-test.toml")
    with pytest.raises(L4TError, match=r"jetson-test\.toml: rootfs\.tarball is not set") as exc:
        check_recipe(loaded)
    assert "never downloads" in str(exc.value) and "Tegra_Linux_Sample-Root" in str(exc.value)
    proc = subprocess.run(
        [
            str(KILN), "build", str(REPO / "recipes" / "jetson-orin.toml"),
            "-o", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
        ],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "jetson-orin.toml: rootfs.tarball is not set" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # no stage ran


def test_a_root_without_the_l4t_files_is_refused(tmp_path: Path) -> None:
    tarball = make_l4t_tarball(tmp_path / "debian.tbz2", l4t=False)
    root = tmp_path / "x"
    root.mkdir()
    subprocess.run(["tar", "-xpf", str(tarball), "-C", str(root)], check=True)
    with pytest.raises(L4TError, match="not an L4T root filesystem: no /etc/nv_tegra_release"):
        check_root(root, str(tarball))


def test_extlinux_is_made_slot_independent() -> None:
    out = render_extlinux(EXTLINUX)
    (append,) = [line for line in out.splitlines() if "APPEND" in line]
    words = append.split()
    assert words[:2] == ["APPEND", "${cbootargs}"]
    assert not any(w.startswith("root=") for w in words) and "rw" not in words
    assert append.endswith(SLOT_ARGS) and "console=ttyTCU0,115200" in words
    assert "LINUX /boot/Image" in out and "FDT /boot/dtb/" in out
    with pytest.raises(L4TError, match="no APPEND line"):
        render_extlinux("LABEL primary\n  LINUX /boot/Image\n")


# -- slow: the whole build on the real arm64 runtime ----------------------------------------------


@pytest.fixture(scope="session")
def arm64_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 frozen runtime (onnxruntime), cached in the build cache across runs."""
    return jetson_standin(tmp_path_factory.mktemp("arm64-rt")).path


def build(top: Path, out: Path, cache: Path, runtime: Path) -> dict[str, str]:
    """One build into its own cache; the development signing key is made once beside ``top``."""
    from image.build.l4t import L4TPipeline
    from image.build.sign import signing_material

    loaded = load_recipe(top / "jetson-test.toml")
    key, keyring = signing_material(loaded, top / "keys-cache")
    report = L4TPipeline(
        loaded, out, cache_dir=cache, keyring=keyring, key=key, runtime=runtime
    ).run()
    return dict(report.outputs)


def debugfs(image: Path, command: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", command, str(image)], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_jetson_build_slots_manifest_inspect_and_repro(tmp_path: Path, arm64_runtime: Path) -> None:
    from image.build.rootfs import file_digest
    from image.inspect import inspect_image

    top = recipes(tmp_path)
    outputs = build(top, tmp_path / "out", tmp_path / "cache", arm64_runtime)
    a, b = Path(outputs["rootfs_a"]), Path(outputs["rootfs_b"])
    assert a.name == "edgekiln-appliance-jetson-orin-1.0.0.rootfs_a.img"
    assert file_digest(a) == file_digest(b)
    assert "image" not in outputs  # no disk image: NVIDIA's tools write the partitions
    features = subprocess.run(
        ["dumpe2fs", "-h", str(a)], capture_output=True, text=True, check=True
    )
    assert "has_journal" not in features.stdout.split("features:")[1].splitlines()[0]

    ext = debugfs(a, "cat /boot/extlinux/extlinux.conf")
    assert "${cbootargs}" in ext and "root=PARTUUID" not in ext and SLOT_ARGS in ext
    assert "APP_b" in debugfs(a, "cat /usr/lib/udev/rules.d/61-edgekiln-l4t-slots.rules")
    assert "nv_tegra_release" in debugfs(a, "ls /etc")
    device = json.loads(debugfs(a, "cat /etc/edgekiln/device.json"))
    assert (device["loader"], device["arch"]) == ("l4t", "arm64")
    assert "EDGEKILN_SLOTS=nvbootctrl" in debugfs(
        a, "cat /etc/systemd/system/edgekiln-agent.service"
    )
    elf = subprocess.run(
        ["debugfs", "-R", "cat /opt/edgekiln/appliance/appliance", str(a)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64

    manifest = Path(outputs["manifest"])
    info = inspect_image(manifest)
    assert info["layout"] == "l4t"
    assert info["verification"]["signature"] == "valid"
    assert info["verification"]["partitions"] == {"data": "ok", "rootfs_a": "ok", "rootfs_b": "ok"}
    assert info["slots"]["rootfs_b"]["device"]["version"] == "1.0.0"
    proc = subprocess.run(
        [str(KILN), "inspect", str(manifest)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "signature: valid" in proc.stdout, proc.stdout + proc.stderr
    with b.open("r+b") as handle:  # one flipped byte in APP_b's image (in a hole, say)
        where = b.stat().st_size // 2 + 12345
        handle.seek(where)
        byte = handle.read(1)
        handle.seek(where)
        handle.write(bytes([byte[0] ^ 1]))
    proc = subprocess.run(
        [str(KILN), "inspect", str(manifest)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0 and "rootfs_b: digest MISMATCH" in proc.stdout

    # Reproducible: an uncached second build (own cache; same key and runtime) is identical.
    again = build(top, tmp_path / "out2", tmp_path / "cache2", arm64_runtime)
    for name in ("rootfs_a", "data", "manifest", "signature", "bundle"):
        assert file_digest(Path(again[name])) == file_digest(Path(outputs[name])), name


def test_plan_names_the_l4t_outputs() -> None:
    proc = subprocess.run(
        [str(KILN), "build", "--plan", str(REPO / "recipes" / "jetson-orin.toml")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert "rootfs_a.img (APP), .rootfs_b.img (APP_b)" in proc.stdout
    assert "never downloaded" in proc.stdout


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_jetson_runtime_passes_its_selftest_under_qemu_user(
    arm64_runtime: Path, tmp_path: Path
) -> None:
    """The jetson-orin runtime (ONNX Runtime standing in for TensorRT) runs its self-test.

    Under qemu-aarch64 with an arm64 /proc/cpuinfo (tests/arm64_runtimes.py: without it ONNX
    Runtime dies with SIGSEGV); the latency budget is scaled for emulation. Its V4L2 camera is
    read in an arm64 guest: tests/e2e/test_jetson_runtime_arm64.py.
    """
    model = REPO / "recipes" / "models" / "inspect-primary"
    exe = arm64_runtime / "appliance"
    args = ("selftest", "--model", str(model), "--backend", "onnxruntime", "--budget-factor", "500")
    done = run_emulated(arm64_root(), exe, *args, "--json", workdir=tmp_path)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"no private mount namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout[done.stdout.index("{") :])
    assert report["passed"] is True and report["backend"] == "onnxruntime", report
    assert report["images"] == 256 and report["top1"] >= report["min_top1"], report


# -- the runtime's glibc against the L4T root's ----------------------------------------------------


def test_glibc_needs_are_read_from_real_elf_files(tmp_path: Path) -> None:
    from image.build import glibc

    tree = tmp_path / "rt"
    (tree / "_internal").mkdir(parents=True)
    libstdcxx = sorted(Path("/usr/lib").glob("*-linux-gnu/libstdc++.so.6"))[0]
    (tree / "_internal" / "libstdc++.so.6").write_bytes(libstdcxx.read_bytes())
    (tree / "notes.txt").write_text("GLIBC_2.99 in a text file is not a need\n")
    need, where = glibc.required(tree)
    assert (2, 17) < need < (2, 99) and where.startswith("_internal/libstdc++.so.6: "), where
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("Package: libc6\nVersion: 2.17-1\n\n")
    with pytest.raises(glibc.GlibcError, match=r"has glibc 2\.17, but the frozen runtime needs"):
        glibc.check(root, tree, "the root")
    (root / "var/lib/dpkg/status").write_text("Package: libc6\nVersion: 2.99-1\n\n")
    assert glibc.check(root, tree, "the root") == (2, 99)
    # no dpkg record: the versions the root's libc.so.6 defines (here the host's own libc)
    (root / "var/lib/dpkg/status").unlink()
    libc = sorted(Path("/usr/lib").glob("*-linux-gnu/libc.so.6"))[0]
    (root / "usr/lib" / libc.parent.name).mkdir(parents=True)
    (root / "usr/lib" / libc.parent.name / "libc.so.6").write_bytes(libc.read_bytes())
    assert glibc.provided(root) >= need  # type: ignore[operator]
    (root / "usr/lib" / libc.parent.name / "libc.so.6").unlink()
    with pytest.raises(glibc.GlibcError, match="cannot tell its glibc version"):
        glibc.check(root, tree, "the root")


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_an_l4t_root_with_an_older_glibc_is_refused(tmp_path: Path, arm64_runtime: Path) -> None:
    """NVIDIA's R36 root has Ubuntu 22.04's glibc 2.35: the runtime frozen in Debian 12 (2.36)
    would not start there, so the build stops before the slot, naming file and symbol."""
    from image.build.glibc import GlibcError

    top = recipes(tmp_path, libc=UBUNTU_LIBC)
    with pytest.raises(GlibcError) as exc:
        build(top, tmp_path / "out", tmp_path / "cache", arm64_runtime)
    message = str(exc.value)
    assert "has glibc 2.35, but the frozen runtime needs 2.36" in message, message
    assert "l4t.tbz2" in message and "kiln build --runtime" in message, message
    assert not (tmp_path / "out" / "edgekiln-appliance-jetson-orin-1.0.0.rootfs_a.img").exists()
