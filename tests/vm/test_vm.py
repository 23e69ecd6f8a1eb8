"""The QEMU harness boots a real UEFI disk, reads its console, survives a power cut."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from image.vm.qemu import Vm, VmConfig, VmError, parse_writes, qemu_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRUB_CFG = """\
set timeout=0
insmod echo
insmod sleep
load_env
set ek_probe=written-by-grub
save_env ek_probe
echo "EDGEKILN-VM-BOOTED"
sleep 600
"""


def _run(cmd: list[str], **kwargs: object) -> None:
    subprocess.run(cmd, check=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def grub_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT disk whose ESP holds a grub-mkimage EFI that prints a marker and waits."""
    return _grub_disk(tmp_path_factory.mktemp("vmdisk"), GRUB_CFG)


REBOOT_CFG = """\
set timeout=0
insmod echo
echo "EDGEKILN-VM-REBOOTING"
reboot
"""


def _grub_disk(work: Path, grub_cfg: str) -> Path:
    """A GPT disk whose ESP holds a grub-mkimage EFI running ``grub_cfg``."""
    embed = work / "embed.cfg"
    embed.write_text(
        "search --no-floppy --label --set=root ESP\n"
        "set prefix=($root)/grub\n"
        "configfile ($root)/grub/grub.cfg\n"
    )
    efi = work / "BOOTX64.EFI"
    modules = [
        *("part_gpt", "fat", "search", "search_label", "configfile", "normal", "echo", "sleep"),
        *("loadenv", "reboot"),
    ]
    _run(
        [
            "grub-mkimage",
            "-O",
            "x86_64-efi",
            "-c",
            str(embed),
            "-p",
            "/grub",
            "-o",
            str(efi),
            *modules,
        ]
    )
    cfg = work / "grub.cfg"
    cfg.write_text(grub_cfg)
    esp = work / "esp.img"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    _run(["mkfs.vfat", "-C", "-F", "32", "-n", "ESP", "--invariant", str(esp), str(40 * 1024)])
    for directory in ("::/EFI", "::/EFI/BOOT", "::/grub"):
        _run(["mmd", "-i", str(esp), directory], env=env)
    _run(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], env=env)
    _run(["mcopy", "-i", str(esp), str(cfg), "::/grub/grub.cfg"], env=env)
    grubenv = work / "grubenv"
    _run(["grub-editenv", str(grubenv), "create"])
    _run(["mcopy", "-i", str(esp), str(grubenv), "::/grub/grubenv"], env=env)
    disk = work / "disk.img"
    with disk.open("wb") as handle:
        handle.truncate(48 * 1024 * 1024)
    script = "label: gpt\nstart=2048, size=81920, type=U, name=boot\n"
    _run(["sfdisk", "-q", str(disk)], input=script.encode())
    _run(
        [
            "dd",
            f"if={esp}",
            f"of={disk}",
            "bs=512",
            "seek=2048",
            "conv=notrunc,sparse",
            "status=none",
        ]
    )
    return disk


def test_boots_reads_console_and_survives_power_cut(grub_disk: Path, tmp_path: Path) -> None:
    config = VmConfig(disk=grub_disk, overlay=True, memory_mb=256, cpus=1, usb=True)
    stick = tmp_path / "stick.img"
    stick.write_bytes(bytes(1024 * 1024))
    with Vm(config, workdir=tmp_path) as vm:
        vm.start()
        vm.wait_for("EDGEKILN-VM-BOOTED", timeout=120)
        # a USB stick plugged into the running machine (QMP) is a device of it
        device = vm.plug_usb(stick)
        peripherals = vm.qmp("qom-list", {"path": "/machine/peripheral"})
        assert isinstance(peripherals, list)
        assert device in {p["name"] for p in peripherals}, peripherals
        vm.power_cut()
        with pytest.raises(VmError, match="not running"):
            vm.plug_usb(stick)
        assert not vm.running
        vm.start()
        vm.wait_for("EDGEKILN-VM-BOOTED", timeout=120)
        assert vm.boots == 2
        assert vm.console(whole=True).count("EDGEKILN-VM-BOOTED") == 2
    # the overlay kept the base image untouched
    assert not (tmp_path / "disk.qcow2").exists() or grub_disk.stat().st_size == 48 * 1024 * 1024


ESP = (2048 * 512, (2048 + 81920) * 512)  # the grub_disk's only partition, in bytes


def test_write_trace_sees_the_guest_write_where_it_lands(grub_disk: Path, tmp_path: Path) -> None:
    """GRUB's save_env rewrites grubenv in place: the trace shows writes inside the ESP only,
    and the disk then holds the new variable (read back with mtools).

    A raw copy, not a qcow2 overlay: firmware writes are not followed by a flush, and a killed
    QEMU loses a qcow2 overlay's unflushed cluster map (not the raw file's data)."""
    disk = tmp_path / "disk.img"
    shutil.copyfile(grub_disk, disk)
    config = VmConfig(disk=disk, memory_mb=256, cpus=1, trace_writes=True)
    with Vm(config, workdir=tmp_path) as vm:
        vm.start()
        written = vm.wait_write(*ESP, timeout=120, min_bytes=1024)
        vm.wait_for("EDGEKILN-VM-BOOTED", timeout=120)
        writes, _ = vm.writes()
        # nothing was written outside the ESP: waiting for such a write times out
        with pytest.raises(VmError, match="within 1 s"):
            vm.wait_write(0, ESP[0], timeout=1)
        vm.power_cut()
        assert written >= 1024
        assert writes and all(w.overlap(*ESP) == w.length for w in writes), writes
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    text = subprocess.run(
        ["mtype", "-i", f"{disk}@@{ESP[0]}", "::/grub/grubenv"],
        check=True, capture_output=True, env=env,
    ).stdout.decode()  # fmt: skip
    assert "ek_probe=written-by-grub" in text


def test_parse_writes_reads_qemu_log_lines_and_skips_torn_ones() -> None:
    text = (
        "virtio_blk_handle_write vdev 0x55d0c0a1b2c0 req 0x7f00 sector 4096 nsectors 8\n"
        "12@1700000000.000001:virtio_blk_handle_write vdev 0x1 req 0x2 sector 10 nsectors 2\n"
        "virtio_blk_handle_write vdev 0x1 req 0x2 sector 99 nsec"
    )
    writes = parse_writes(text)
    assert [(w.offset, w.length) for w in writes] == [(4096 * 512, 4096), (5120, 1024)]
    assert writes[0].overlap(4096 * 512 + 1024, 10**9) == 3072
    assert writes[0].overlap(0, 4096 * 512) == 0


def test_a_guest_reset_relaunches_qemu_on_the_same_disk(tmp_path: Path) -> None:
    """relaunch_on_reset: GRUB's reboot ends QEMU (-no-reboot); the wait starts it again, so
    the console shows the marker once per reset, within one power-on."""
    (tmp_path / "disk").mkdir()
    disk = _grub_disk(tmp_path / "disk", REBOOT_CFG)
    config = VmConfig(disk=disk, overlay=True, memory_mb=256, cpus=1, relaunch_on_reset=True)
    with Vm(config, workdir=tmp_path / "vm") as vm:
        vm.start()
        vm.wait_for(r"(EDGEKILN-VM-REBOOTING[\s\S]*){3}", timeout=300)
        assert vm.boots == 1 and vm.resets >= 2 and vm.launches == vm.resets + 1
    without = VmConfig(disk=disk, overlay=True, memory_mb=256, cpus=1)
    assert "-no-reboot" not in qemu_command(without, disk, tmp_path / "v", tmp_path / "s")


def test_wait_for_times_out_with_console_tail(grub_disk: Path, tmp_path: Path) -> None:
    with Vm(VmConfig(disk=grub_disk, overlay=True, memory_mb=256, cpus=1), workdir=tmp_path) as vm:
        vm.start()
        with pytest.raises(VmError, match="did not appear"):
            vm.wait_for("NEVER-PRINTED", timeout=3)


def test_command_line_forwards_ports_and_adds_watchdog(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"")
    config = VmConfig(disk=disk, forwards={8443: 18443}, extra_drives=[tmp_path / "usb.img"])
    cmd = qemu_command(config, disk, tmp_path / "vars.fd", tmp_path / "serial.log")
    joined = " ".join(cmd)
    assert "hostfwd=tcp:127.0.0.1:18443-:8443" in joined
    assert "i6300esb" in cmd and "watchdog=reset" in cmd
    assert f"file={tmp_path / 'usb.img'},format=raw,if=virtio,readonly=on" in cmd
    assert cmd[cmd.index("-accel") + 1] in {"tcg", "kvm"}
    # numpy 2 needs SSSE3/SSE4.x, which TCG's default qemu64 CPU lacks
    assert cmd[cmd.index("-cpu") + 1] == "max"


def test_cache_mode_reaches_the_system_disk(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"")
    default = qemu_command(VmConfig(disk=disk), disk, tmp_path / "v.fd", tmp_path / "s.log")
    assert f"file={disk},format=raw,if=virtio,cache=unsafe" in default
    config = VmConfig(disk=disk, cache="writeback")
    cmd = qemu_command(config, disk, tmp_path / "v.fd", tmp_path / "s.log")
    assert f"file={disk},format=raw,if=virtio,cache=writeback" in cmd
    with pytest.raises(VmError, match="cache"):
        VmConfig(disk=disk, cache="fast")


def test_rejects_unknown_accelerator(tmp_path: Path) -> None:
    with pytest.raises(VmError, match="accel"):
        VmConfig(disk=tmp_path / "x", accel="hvf")
