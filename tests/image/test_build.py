"""The build pipeline end to end on a small supplied base tarball, checked with host tools.

The base is a tiny tree passed as ``rootfs.tarball`` (so no Debian download here; the real
Debian build is in test_build_debian.py); the frozen runtime is real (image.freeze.runtime, cached
for the session). Everything else is the real pipeline: slot, ESP, data, GPT, bmap, zstd, manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from image.build.identity import image_name
from image.build.pipeline import Pipeline
from image.build.sign import signing_material
from image.inspect import inspect_image
from image.recipe import load_recipe

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# The frozen runtime comes from image.freeze.runtime (another part of the builder).
pytest.importorskip("image.freeze.runtime")
KILN = Path(sys.executable).parent / "kiln"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*argv: str, **kw: object) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, **kw).stdout  # type: ignore[call-overload]


def make_base_tarball(path: Path) -> Path:
    """A tiny root: a 'kernel', an 'initrd', unit directories; just enough for the stages."""
    root = path.parent / "base-tree"
    for d in (
        "boot",
        "etc/systemd/system",
        "etc/systemd/network",
        "usr/lib/systemd/system",
        "var/log",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "boot" / "vmlinuz-6.1.0-test-amd64").write_bytes(b"\x7fkernel" * 1000)
    (root / "boot" / "initrd.img-6.1.0-test-amd64").write_bytes(b"initrd" * 1000)
    (root / "etc" / "fstab").write_text("# UNCONFIGURED FSTAB\n")
    (root / "etc" / "machine-id").write_text("")
    (root / "lib").symlink_to("usr/lib")
    with tarfile.open(path, "w") as tar:
        tar.add(root, arcname=".")
    return path


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("EDGEKILN_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("kiln-cache")


@pytest.fixture(scope="session")
def mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recipe directory: the real recipes, small model packages, a mini recipe on a tarball."""
    top = tmp_path_factory.mktemp("mini")
    recipes = top / "recipes"
    recipes.mkdir()
    repo = Path(__file__).resolve().parents[2] / "recipes"
    for toml in repo.glob("*.toml"):
        (recipes / toml.name).write_text(toml.read_text())
    for name in ("inspect-primary", "inspect-fallback"):
        pkg = recipes / "models" / name
        pkg.mkdir(parents=True)
        (pkg / "model.json").write_text(json.dumps({"format": 1, "name": name, "version": "1.0.0"}))
        (pkg / "model.onnx").write_bytes(hashlib.sha256(name.encode()).digest() * 4096)
    make_base_tarball(recipes / "base.tar")
    (recipes / "mini.toml").write_text(
        'extends = "generic-x86-64.toml"\nversion = "1.2.3"\n\n'
        '[rootfs]\ntarball = "base.tar"\n\n'
        "[partitions]\nrootfs_mib = 980\ndata_mib = 40\nboot_mib = 40\n\n"
        "[runtime]\nextras = []\n"  # no OpenCV: smaller test images
    )
    return recipes


@pytest.fixture(scope="session")
def runtime(mini: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real frozen runtime, frozen once and then passed to every build as prebuilt.

    Builds within the session must see the same runtime even while appliance/ is edited.
    It comes from the kiln cache's ``freeze/`` (``$EDGEKILN_TEST_CACHE`` or the user's): the
    same entry the QEMU profile's builds use (generic-x86-64 without extras), filled once under
    its lock (image/cache.py), so a run of the suite freezes it once, not once more here. The
    stages under test (slot, boot, data, outputs) still build in this session's own cache.
    """
    from image.build.identity import default_cache_dir
    from image.freeze.runtime import freeze_runtime

    out = tmp_path_factory.mktemp("runtime")
    loaded = load_recipe(mini / "mini.toml")
    shared = Path(os.environ.get("EDGEKILN_TEST_CACHE") or default_cache_dir()) / "freeze"
    return freeze_runtime(loaded, out, cache_dir=shared).path


RUNTIME: list[Path] = []
SKIP_UNCHECKED = frozenset({"compress", "bundle"})  # outputs a test never looks at


@pytest.fixture(scope="session", autouse=True)
def _runtime_for_builds(runtime: Path) -> None:
    RUNTIME[:] = [runtime]


def build(
    recipe: Path, out: Path, cache: Path, skip: frozenset[str] = frozenset()
) -> dict[str, object]:
    loaded = load_recipe(recipe)
    key, keyring = signing_material(loaded, cache)
    report = Pipeline(
        loaded, out, cache_dir=cache, keyring=keyring, key=key, runtime=RUNTIME[0], skip=skip
    ).run()
    return {"report": report, "image": out / f"{image_name(loaded)}.img", "loaded": loaded}


@pytest.fixture(scope="session")
def first(mini: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return build(mini / "mini.toml", tmp_path_factory.mktemp("out1"), cache)


def extract(image: Path, name: str, dest: Path) -> Path:
    table = json.loads(run("sfdisk", "-J", str(image)))["partitiontable"]
    part = next(p for p in table["partitions"] if p["name"] == name)
    run(
        "dd", f"if={image}", f"of={dest}", "bs=1M", f"skip={part['start'] * 512}",
        f"count={part['size'] * 512}", "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none",
    )  # fmt: skip
    return dest


def test_image_checked_by_independent_tools(first: dict[str, object], tmp_path: Path) -> None:
    image = first["image"]
    assert isinstance(image, Path)
    table = json.loads(run("sfdisk", "-J", str(image)))["partitiontable"]
    assert [p["name"] for p in table["partitions"]] == ["boot", "rootfs_a", "rootfs_b", "data"]
    esp = extract(image, "boot", tmp_path / "esp.vfat")
    run("fsck.vfat", "-n", str(esp))
    grubenv = tmp_path / "grubenv"
    run("mcopy", "-i", str(esp), "::/grub/grubenv", str(grubenv), env=MTOOLS_ENV)
    env_list = run("grub-editenv", str(grubenv), "list")
    assert "ek_committed=A" in env_list
    cfg = run("mtype", "-i", str(esp), "::/grub/grub.cfg", env=MTOOLS_ENV)
    assert "root=$ek_root" in cfg and "--part-uuid" in cfg and "console=ttyS0,115200" in cfg
    efi = run("mdir", "-i", str(esp), "::/EFI/BOOT", env=MTOOLS_ENV)
    assert "BOOTX64  EFI" in efi
    slot = extract(image, "rootfs_a", tmp_path / "slot.ext4")
    run("fsck.ext4", "-fn", str(slot))
    assert "has_journal" not in run("dumpe2fs", "-h", str(slot))
    device = json.loads(run("debugfs", "-R", "cat /etc/edgekiln/device.json", str(slot)))
    assert device["version"] == "1.2.3" and device["target"] == "generic-x86-64"
    assert device["security_version"] == 1  # the slot's own level (recipes/base.toml)
    unit = run("debugfs", "-R", "cat /etc/systemd/system/edgekiln-agent.service", str(slot))
    assert "Type=notify" in unit and "WatchdogSec=30" in unit
    assert "ExecStart=/opt/edgekiln/appliance/appliance agent" in unit
    wd = run("debugfs", "-R", "cat /etc/systemd/system.conf.d/50-edgekiln-watchdog.conf", str(slot))
    assert "RuntimeWatchdogSec=30" in wd
    assert "/dev/disk/edgekiln/data" in run("debugfs", "-R", "cat /etc/fstab", str(slot))
    assert "vmlinuz-6.1.0-test-amd64" in run("debugfs", "-R", "stat /boot/vmlinuz", str(slot))
    runtime = run("debugfs", "-R", "stat /opt/edgekiln/appliance/appliance", str(slot))
    assert "Type: regular" in runtime
    models = run("debugfs", "-R", "ls /opt/edgekiln/models/primary", str(slot))
    assert "model.json" in models
    assert "keyring.json" in run("debugfs", "-R", "ls /etc/edgekiln", str(slot))
    # the recipe's [telemetry] travels with the slot (none here: telemetry off)
    telemetry = run("debugfs", "-R", "cat /etc/edgekiln/telemetry.json", str(slot))
    assert json.loads(telemetry) == {"format": 1}
    data = extract(image, "data", tmp_path / "data.ext4")
    run("fsck.ext4", "-fn", str(data))
    pipeline = json.loads(run("debugfs", "-R", "cat /edgekiln/pipeline.json", str(data)))
    assert pipeline["model"] == "/opt/edgekiln/models/primary"
    # Only the back ends the runtime carries (no OpenCV here: [runtime] extras = [])
    assert pipeline["backends"] == ["onnxruntime"]
    device = json.loads(run("debugfs", "-R", "cat /etc/edgekiln/device.json", str(slot)))
    assert device["runtime"] == {"backends": ["onnxruntime"], "extras": []}
    # bmaptool copy of the compressed image equals the image.
    bmap = image.with_suffix(".bmap")
    copy = tmp_path / "copy.img"
    run("bmaptool", "copy", "--bmap", str(bmap), str(image) + ".zst", str(copy))
    assert sha(copy) == sha(image)


def test_report_and_manifest(first: dict[str, object]) -> None:
    image = first["image"]
    assert isinstance(image, Path)
    report = json.loads((image.parent / "build-report.json").read_text())
    assert [s["name"] for s in report["stages"]] == [
        "base", "runtime", "slot", "boot", "data", "disk", "bmap", "compress", "manifest", "bundle",
    ]  # fmt: skip
    assert "stage" in (image.parent / "build-report.txt").read_text()
    info = inspect_image(image)
    assert info["verification"]["signature"] == "valid"
    assert set(info["verification"]["partitions"].values()) == {"ok"}
    assert info["slots"]["rootfs_a"]["device"]["version"] == "1.2.3"
    assert info["slots"]["rootfs_b"]["state"] == "empty"
    assert info["boot"]["grubenv"]["ek_committed"] == "A"


def test_full_bundle_verifies_with_the_keyring_in_the_image(
    first: dict[str, object], tmp_path: Path
) -> None:
    image = first["image"]
    assert isinstance(image, Path)
    slot = extract(image, "rootfs_a", tmp_path / "slot.ext4")
    ring = tmp_path / "keyring.json"
    ring.write_bytes(
        subprocess.run(
            ["debugfs", "-R", "cat /etc/edgekiln/keyring.json", str(slot)],
            capture_output=True,
            check=True,
        ).stdout
    )
    bundle = image.with_suffix(".bundle")
    appliance = Path(sys.executable).parent / "appliance"
    out = run(
        str(appliance), "bundle", "verify", str(bundle), "--keyring", str(ring),
        "--product", "edgekiln-appliance", "--target", "generic-x86-64",
    )  # fmt: skip
    assert out.startswith("OK ") and "1.2.3" in out


def test_inspect_detects_tampering(first: dict[str, object], tmp_path: Path) -> None:
    image = first["image"]
    assert isinstance(image, Path)
    copy = tmp_path / image.name
    run("cp", "--sparse=always", str(image), str(copy))
    for suffix in (".manifest.json", ".manifest.sig"):
        name = image.name.removesuffix(".img") + suffix
        (tmp_path / name).write_bytes((image.parent / name).read_bytes())
    table = json.loads(run("sfdisk", "-J", str(copy)))["partitiontable"]
    data = next(p for p in table["partitions"] if p["name"] == "data")
    with copy.open("r+b") as handle:
        handle.seek(data["start"] * 512 + 5 * 1024 * 1024)
        handle.write(b"tampered")
    out = subprocess.run(
        [str(KILN), "inspect", str(copy)], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0
    assert "data: digest MISMATCH" in out.stdout
    assert "  runtime: back ends onnxruntime; extras none" in out.stdout  # from device.json
    manifest = tmp_path / (image.name.removesuffix(".img") + ".manifest.json")
    manifest.write_bytes(manifest.read_bytes().replace(b'"1.2.3"', b'"9.9.9"'))
    info = inspect_image(copy)
    assert info["verification"]["signature"] == "INVALID"


def test_rebuild_is_cached_and_byte_identical(
    first: dict[str, object], mini: Path, cache: Path, tmp_path: Path
) -> None:
    again = build(mini / "mini.toml", tmp_path / "out2", cache)
    stages = {s.name: s.cached for s in again["report"].stages}  # type: ignore[attr-defined]
    assert all(stages.values()), stages  # outputs too: copied from the cache
    for suffix in (".img", ".bmap", ".img.zst", ".manifest.json", ".manifest.sig", ".bundle"):
        name = Path(str(first["image"]).removesuffix(".img") + suffix).name
        assert sha(tmp_path / "out2" / name) == sha(Path(first["image"]).parent / name), suffix  # type: ignore[arg-type]


def test_skip_leaves_out_the_zstd_copy_and_the_bundle_and_caches_apart(
    first: dict[str, object], mini: Path, cache: Path, runtime: Path, tmp_path: Path
) -> None:
    argv = [str(KILN), "build", str(mini / "mini.toml"), "--cache", str(cache)]
    argv += ["--runtime", str(runtime)]
    wrong = subprocess.run([*argv, "-o", str(tmp_path / "no"), "--skip", "compress,disk"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert wrong.returncode == 2 and "only compress, bundle can be skipped" in wrong.stderr
    assert not (tmp_path / "no").exists()
    plan = run(*argv, "--plan", "--skip", "bundle")
    assert "8. compress  zstd" in plan and "10. bundle    skipped (--skip)" in plan, plan[-800:]
    run(*argv, "-o", str(tmp_path / "lean"), "--skip", "compress,bundle")
    report = json.loads((tmp_path / "lean" / "build-report.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    for name in ("compress", "bundle"):
        assert stages[name]["detail"] == "skipped (--skip)" and not stages[name]["cached"]
    assert {"compressed", "bundle"}.isdisjoint(report["outputs"]), report["outputs"]
    image = Path(str(first["image"]))
    lean = tmp_path / "lean" / image.name
    stem = image.name.removesuffix(".img")
    made = {p.name for p in lean.parent.iterdir()}
    assert made == {"build-report.json", "build-report.txt"} | {
        stem + suffix for suffix in (".img", ".bmap", ".manifest.json", ".manifest.sig")
    }, made
    assert sha(lean) == sha(image)  # the same image; only the extra outputs are left out
    # the lean output set is cached apart: a default build still gets every output
    full = build(mini / "mini.toml", tmp_path / "full", cache)
    assert all(s.cached for s in full["report"].stages)  # type: ignore[attr-defined]
    for suffix in (".img.zst", ".bundle"):
        name = stem + suffix
        assert sha(tmp_path / "full" / name) == sha(image.parent / name), suffix


def test_uncached_rebuild_is_byte_identical(
    first: dict[str, object], mini: Path, cache: Path, tmp_path: Path
) -> None:
    # Fresh slot/boot/data caches; base and runtime shared (docs/decisions.md §11; the
    # runtime is the session's prebuilt one, frozen in the kiln cache's freeze/).
    fresh = tmp_path / "cache"
    fresh.mkdir()
    for kind in ("base", "keys"):
        (fresh / kind).symlink_to(cache / kind, target_is_directory=True)
    again = build(mini / "mini.toml", tmp_path / "out", fresh)
    stages = {s.name: s.cached for s in again["report"].stages}  # type: ignore[attr-defined]
    assert not stages["slot"] and not stages["boot"] and not stages["data"]
    assert sha(again["image"]) == sha(first["image"])  # type: ignore[arg-type]


def test_two_builds_sharing_a_cold_cache_build_each_stage_once(
    mini: Path, runtime: Path, tmp_path: Path
) -> None:
    """Two ``kiln build`` processes started together on one empty cache (image/cache.py): the
    second waits for each entry the first is filling and takes it from the cache; both images
    are identical and every cache entry is whole."""
    shared = tmp_path / "cache"
    argv = [str(KILN), "build", str(mini / "mini.toml"), "--cache", str(shared)]
    argv += ["--runtime", str(runtime)]
    outs = [tmp_path / "out1", tmp_path / "out2"]
    pipe = subprocess.PIPE
    procs = [
        subprocess.Popen([*argv, "-o", str(out)], stdout=pipe, stderr=pipe, text=True)
        for out in outs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
    reports = [json.loads((out / "build-report.json").read_text()) for out in outs]
    for stage in ("base", "slot", "boot", "data", "disk"):
        built = [r for r in reports for s in r["stages"] if s["name"] == stage and not s["cached"]]
        assert len(built) == 1, f"stage {stage} built {len(built)} times"
    images = [Path(r["outputs"]["image"]) for r in reports]
    assert sha(images[0]) == sha(images[1])
    for kind, name in (("slot", "rootfs.ext4"), ("boot", "boot.vfat"), ("data", "data.ext4")):
        (entry,) = [e for e in (shared / kind).iterdir() if e.is_dir()]
        assert (entry / "complete").is_file()
        assert (entry / "digest").read_text().strip() == sha(entry / name)
    assert not list(shared.glob("*/.*.tmp-*")), "scratch folders left in the cache"
    assert not list(shared.glob("*/.*.use")), "lock files left in the cache"
    assert not list((shared / "work").iterdir()), "build folders left in the cache"


def test_model_only_change_rebuilds_only_the_slot(
    first: dict[str, object], mini: Path, cache: Path, tmp_path: Path
) -> None:
    recipes = tmp_path / "recipes"
    run("cp", "-a", str(mini), str(recipes))
    (recipes / "models" / "inspect-primary" / "model.onnx").write_bytes(b"retrained" * 5000)
    again = build(recipes / "mini.toml", tmp_path / "out", cache)
    stages = {s.name: s.cached for s in again["report"].stages}  # type: ignore[attr-defined]
    assert stages == {
        "base": True, "runtime": True, "slot": False, "boot": True, "data": True,
        "disk": False, "bmap": False, "compress": False, "manifest": False, "bundle": False,
    }  # fmt: skip
    assert sha(again["image"]) != sha(first["image"])  # type: ignore[arg-type]


def test_plan_and_bad_recipe_fail_before_any_stage(mini: Path, tmp_path: Path) -> None:
    plan = run(str(KILN), "build", str(mini / "mini.toml"), "--plan", "--cache", str(tmp_path))
    assert '"version": "1.2.3"' in plan and "8. compress" in plan
    bad = mini / "bad.toml"
    bad.write_text('extends = "mini.toml"\n[partitions]\nrootfs_mib = 100\n')
    out = tmp_path / "out"
    done = subprocess.run(
        [str(KILN), "build", str(bad), "-o", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "bad.toml: partitions.rootfs_mib" in done.stderr
    assert not out.exists()
    arm = subprocess.run(
        [str(KILN), "build", str(mini / "jetson-orin.toml"), "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert arm.returncode != 0 and "rootfs.tarball is not set" in arm.stderr  # L4T: user's root
    assert not out.exists()


def test_debian_image_for_generic_x86_64(mini: Path, cache: Path, tmp_path: Path) -> None:
    """The real recipe: a Debian bookworm base from mmdebstrap (downloads ~150 MB, minutes)."""
    # the slot, the image and its manifest are checked; the zstd copy and the bundle are the
    # mini recipe's tests' (kiln build --skip)
    built = build(mini / "generic-x86-64.toml", tmp_path / "out", cache, SKIP_UNCHECKED)
    image = built["image"]
    assert isinstance(image, Path)
    slot = extract(image, "rootfs_a", tmp_path / "slot.ext4")
    run("fsck.ext4", "-fn", str(slot))
    boot_dir = run("debugfs", "-R", "ls -l /boot", str(slot))
    assert "initrd.img-" in boot_dir and "vmlinuz-" in boot_dir
    kernel = run("debugfs", "-R", "stat /boot/vmlinuz", str(slot))
    assert "Fast link dest" in kernel
    assert "systemd" in run("debugfs", "-R", "ls /usr/lib/systemd", str(slot))
    runtime = run("debugfs", "-R", "ls -l /opt/edgekiln/appliance", str(slot))
    assert "_internal" in runtime
    info = inspect_image(image)
    assert info["verification"]["signature"] == "valid"
    assert set(info["verification"]["partitions"].values()) == {"ok"}
    assert info["slots"]["rootfs_a"]["kernel"].startswith("vmlinuz-6.1")
    copy = tmp_path / "copy.img"
    run("bmaptool", "copy", "--bmap", str(image.with_suffix(".bmap")), str(image), str(copy))
    assert sha(copy) == sha(image)
