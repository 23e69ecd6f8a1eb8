"""``appliance usb-update`` against real stick images (mke2fs -d, mksquashfs, mkfs.vfat + mtools)
and a file-backed demo device: what is taken off a stick, how it is mounted, what is installed."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.device import Device
from appliance.slots.state import BootState
from appliance.state import load_state
from appliance.tui.demo import NEW_VERSION, TARGET, _bundle, _slot_image, build_demo
from appliance.usb_update import FILESYSTEMS, MOUNT_OPTIONS, mount_command, mounted, pick_bundle

REPO = Path(__file__).resolve().parents[2]
APPLIANCE = REPO / ".venv" / "bin" / "appliance"


@pytest.fixture
def demo(tmp_path: Path) -> Device:
    from tests.inference.fixtures import make_package

    return build_demo(tmp_path / "device", make_package(tmp_path / "model"))


def good(device: Device) -> Path:
    return next(Path(g) for g in device.usb_globs) / "edgekiln-demo-1.1.0.bundle"


def ext4_stick(tmp_path: Path, fill: dict[str, object]) -> Path:
    """A real ext4 image made from a directory: str value = symlink target, Path = file copied,
    "fifo" / "dir" / "chardev" = that kind of entry."""
    top = tmp_path / "stick-tree"
    top.mkdir()
    for name, what in fill.items():
        entry = top / name
        if isinstance(what, Path):
            shutil.copyfile(what, entry)
        elif what == "fifo":
            os.mkfifo(entry)
        elif what == "dir":
            entry.mkdir()
        elif what == "chardev":
            os.mknod(entry, 0o644 | 0o020000, os.makedev(1, 3))  # like /dev/null
        else:
            entry.symlink_to(str(what))
    image = tmp_path / "stick.ext4"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", "EK-UPDATE", "-d", str(top), str(image), "16M"],
        check=True,
    )
    return image


@pytest.fixture(scope="module")
def can_mount(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip where this host cannot mount an ext4 image (no root or no loop devices)."""
    tmp = tmp_path_factory.mktemp("probe")
    image = tmp / "probe.ext4"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(image), "4M"], check=True)
    (tmp / "m").mkdir()
    proc = subprocess.run(
        ["mount", "-o", "ro", str(image), str(tmp / "m")], capture_output=True, check=False
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount an image here: {proc.stderr.decode().strip()}")
    subprocess.run(["umount", str(tmp / "m")], check=True)


def usb_update(device: Device, stick: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI as the unit runs it, pointed at the demo device's files, without a reboot."""
    slots = device.slot_targets
    cmd = [
        str(APPLIANCE), "usb-update", str(stick), "--no-reboot",
        "--mount-dir", str(tmp_path / "mnt"), "--loader", str(device.loader_spec),
        "--booted", "A", "--data-dir", str(device.data_dir),
        "--keyring", str(device.keyring_path),
        "--slot", f"A={slots['A']}", "--slot", f"B={slots['B']}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "EDGEKILN_DEVICE_CONFIG": str(device.data_dir.parent / "etc/edgekiln/device.json"),
    }
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def test_a_regular_bundle_is_installed_once_and_remembered(
    can_mount: None, demo: Device, tmp_path: Path
) -> None:
    bundle = good(demo)
    stick = ext4_stick(tmp_path, {"update.bundle": bundle, "notes.txt": bundle})
    first = usb_update(demo, stick, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "edgekiln-usb-update: installing update.bundle from" in first.stdout
    assert demo.slot_targets["B"].read_bytes() == _slot_image(NEW_VERSION)
    assert demo.loader().read() == BootState("A", "B", 1)
    installed = load_state(demo.data_dir).installed
    assert installed is not None and installed.version == NEW_VERSION
    sums = (demo.state_dir / "usb-installed").read_text().split()
    assert sums == [hashlib.sha256(bundle.read_bytes()).hexdigest()]
    again = usb_update(demo, stick, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "update.bundle was already installed from USB: skipped" in again.stdout
    assert not os.path.ismount(tmp_path / "mnt")


def test_links_pipes_devices_and_directories_are_never_taken(
    can_mount: None, demo: Device, tmp_path: Path
) -> None:
    """A symlink to a valid bundle elsewhere on the device, a FIFO, a device node and a
    directory, all named *.bundle: nothing is opened, installed or remembered."""
    slot_b = demo.slot_targets["B"].read_bytes()
    stick = ext4_stick(
        tmp_path,
        {"a.bundle": str(good(demo)), "b.bundle": "fifo", "c.bundle": "chardev",
         "d.bundle": "dir"},
    )  # fmt: skip
    proc = usb_update(demo, stick, tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in ("a.bundle (a symbolic link)", "b.bundle (not a regular file)",
                 "c.bundle (not a regular file)", "d.bundle (not a regular file)",
                 f"no *.bundle on {stick}"):  # fmt: skip
        assert line in proc.stdout
    assert demo.slot_targets["B"].read_bytes() == slot_b
    assert demo.loader().read() == BootState()
    assert not (demo.state_dir / "usb-installed").exists()


@pytest.mark.parametrize("fs", ["squashfs", "ext4-without-label-check"])
def test_only_vfat_exfat_and_ext4_are_mounted(
    can_mount: None, demo: Device, tmp_path: Path, fs: str
) -> None:
    """A squashfs stick holding a valid bundle is not mounted (any other kernel driver would
    parse a stranger's medium); an ext4 one is mounted ro,nodev,nosuid,noexec."""
    top = tmp_path / "tree"
    top.mkdir()
    shutil.copyfile(good(demo), top / "update.bundle")
    if fs == "squashfs":
        stick = tmp_path / "stick.sqfs"
        subprocess.run(["mksquashfs", str(top), str(stick), "-quiet", "-noappend"], check=True)
        proc = usb_update(demo, stick, tmp_path)
        assert proc.returncode != 0
        assert f"cannot mount {stick} read-only" in proc.stderr
        assert "vfat, exfat, ext4" in proc.stderr
        assert demo.loader().read() == BootState()
        return
    stick = ext4_stick(tmp_path, {"update.bundle": good(demo)})
    with mounted(str(stick), tmp_path / "mnt") as where:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        line = next(m for m in mounts if m.split()[1] == str(where))
        fstype, options = line.split()[2], set(line.split()[3].split(","))
        assert fstype == "ext4"
        assert {"ro", "nodev", "nosuid", "noexec"} <= options
        assert pick_bundle(where) == (where / "update.bundle", [])
    assert not os.path.ismount(tmp_path / "mnt")


def test_mount_command_names_the_three_file_systems() -> None:
    assert mount_command("/dev/sdb1", Path("/run/x")) == [
        "mount", "-t", "vfat,exfat,ext4", "-o", "ro,nodev,nosuid,noexec", "/dev/sdb1", "/run/x",
    ]  # fmt: skip
    assert (FILESYSTEMS, MOUNT_OPTIONS) == ("vfat,exfat,ext4", "ro,nodev,nosuid,noexec")


def test_a_vfat_stick_made_with_mtools_is_read_where_the_kernel_has_vfat(
    demo: Device, tmp_path: Path
) -> None:
    """The stick the field uses (mkfs.vfat + mcopy, as tests/e2e makes it)."""
    if "vfat" not in Path("/proc/filesystems").read_text():
        pytest.skip("this kernel has no vfat (the QEMU end-to-end tests mount one)")
    stick = tmp_path / "stick.vfat"
    subprocess.run(["mkfs.vfat", "-C", "-n", "EK-UPDATE", str(stick), "16384"], check=True)
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mcopy", "-i", str(stick), str(good(demo)), "::/u.bundle"], env=env, check=True)
    proc = usb_update(demo, stick, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert demo.slot_targets["B"].read_bytes() == _slot_image(NEW_VERSION)


def test_the_bundle_hashed_is_the_bundle_installed(
    demo: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is replaced by another valid bundle right after it was hashed: the open file is
    installed, and its sum is the one remembered."""
    import appliance.localbundle as localbundle
    from appliance.usb_update import update_from

    top = tmp_path / "top"
    top.mkdir()
    path = top / "update.bundle"
    shutil.copyfile(good(demo), path)
    original = hashlib.sha256(path.read_bytes()).hexdigest()
    real = localbundle.sha256_of

    def hash_then_swap(stream: object) -> str:
        digest = real(stream)  # type: ignore[arg-type]
        swap = top / "swap"
        swap.write_bytes(_bundle("0.5.0", 1, TARGET))
        os.replace(swap, path)
        return digest

    monkeypatch.setattr(localbundle, "sha256_of", hash_then_swap)
    monkeypatch.setenv(
        "EDGEKILN_DEVICE_CONFIG", str(demo.data_dir.parent / "etc/edgekiln/device.json")
    )
    assert update_from(
        top, "stick", data_dir=demo.data_dir, install_into=demo.slot_targets,
        loader_spec=demo.loader_spec, booted="A", keyring_path=demo.keyring_path,
    )  # fmt: skip
    installed = load_state(demo.data_dir).installed
    assert installed is not None and installed.version == NEW_VERSION
    assert demo.slot_targets["B"].read_bytes() == _slot_image(NEW_VERSION)
    assert (demo.state_dir / "usb-installed").read_text().split() == [original]


def test_the_tuis_mount_takes_the_same_three_file_systems_only(
    can_mount: None, tmp_path: Path
) -> None:
    """The Update screen's "Enter mounts it": ext4 read-only without exec/dev/suid; squashfs no."""
    from appliance.tui.usb import UsbError, UsbPartition, mount_readonly

    top = tmp_path / "tree"
    top.mkdir()
    (top / "x.bundle").write_bytes(b"x")
    sqfs = tmp_path / "stick.sqfs"
    subprocess.run(["mksquashfs", str(top), str(sqfs), "-quiet", "-noappend"], check=True)
    try:
        with pytest.raises(UsbError, match="a stick must carry vfat, exfat or ext4"):
            mount_readonly(UsbPartition(str(sqfs), "sqfs", "squashfs", "1M", None), tmp_path / "m")
    finally:  # mounted after all (code without the type list): leave no mount behind
        if os.path.ismount(tmp_path / "m" / "sqfs"):
            subprocess.run(["umount", str(tmp_path / "m" / "sqfs")], check=True)
    ext4 = ext4_stick(tmp_path, {"x.bundle": top / "x.bundle"})
    where = mount_readonly(UsbPartition(str(ext4), "stick", "ext4", "16M", None), tmp_path / "m")
    try:
        line = next(
            m for m in Path("/proc/self/mounts").read_text().splitlines()
            if m.split()[1] == str(where)
        )  # fmt: skip
        assert {"ro", "nodev", "nosuid", "noexec"} <= set(line.split()[3].split(","))
    finally:
        subprocess.run(["umount", str(where)], check=True)
