"""Boot a device image in QEMU: serial log, port forwards, power cuts, and booting again.

Used by the end-to-end tests and by people (`kiln vm IMAGE`, `tools/vm.py`). The disk image is
used as it is (or through a qcow2 overlay, so one built image serves many scenarios); UEFI
variables live in a private copy of OVMF_VARS so every VM starts from the same firmware state.

KVM is used only when asked for (``accel="kvm"``) or when ``EDGEKILN_VM_ACCEL=kvm`` is set: on
some hosts ``/dev/kvm`` exists but guests hang (docs/decisions.md §23), so TCG is the safe default.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image.errors import BuildError
from image.vm.writes import WRITE_EVENT, Write, parse_writes

OVMF_DIRS = (Path("/usr/share/OVMF"), Path("/usr/share/ovmf"), Path("/usr/share/qemu"))
OVMF_CODE_NAMES = ("OVMF_CODE_4M.fd", "OVMF_CODE.fd")
OVMF_VARS_NAMES = ("OVMF_VARS_4M.fd", "OVMF_VARS.fd")
#: Debian's u-boot-qemu build for ``-M virt`` (passed as ``-bios``): distro boot finds boot.scr
UBOOT_QEMU_ARM64 = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
QEMU_BINARIES = {"amd64": ("qemu-system-x86_64", "qemu-system-x86"),
                 "arm64": ("qemu-system-aarch64", "qemu-system-arm")}  # fmt: skip
#: the CPU model per architecture when VmConfig.cpu is not given (see VmConfig.cpu)
DEFAULT_CPU = {"amd64": "max", "arm64": "cortex-a57"}


class VmError(BuildError):
    """QEMU is missing, failed to start, or the guest did not do what was awaited."""


def _find_firmware(names: tuple[str, ...]) -> Path:
    for directory in OVMF_DIRS:
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    raise VmError(
        f"OVMF firmware ({' or '.join(names)}) not found: install the Debian package 'ovmf'"
    )


def image_arch(disk: Path) -> str:
    """The architecture of a built raw image, from its slots' GPT root type GUID."""
    from image.build.disk import TYPE_ROOT, read_table

    try:
        table = read_table(disk)
    except BuildError as exc:
        raise VmError(f"{disk}: cannot read its GPT ({exc}); pass the architecture") from None
    by_type = {guid.upper(): arch for arch, guid in TYPE_ROOT.items()}
    for part in table:
        if part.type_guid in by_type:
            return by_type[part.type_guid]
    raise VmError(f"{disk}: no rootfs partition with a known root type; pass the architecture")


def free_port() -> int:
    """An unused TCP port on the host's loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class VmConfig:
    """What to boot and how."""

    disk: Path
    memory_mb: int = 1024
    cpus: int = 2
    accel: str = field(default_factory=lambda: os.environ.get("EDGEKILN_VM_ACCEL", "tcg"))
    #: guest TCP port -> host port on 127.0.0.1 (user-mode networking)
    forwards: dict[int, int] = field(default_factory=dict)
    #: guest-side "ADDRESS:PORT" -> a host command run for each connection the guest opens
    #: there, its stdin/stdout being the connection (QEMU ``guestfwd=...-cmd:``); no commas
    guest_commands: dict[str, list[str]] = field(default_factory=dict)
    #: extra raw drives (e.g. a "USB stick" image holding a bundle), attached read-only
    extra_drives: list[Path] = field(default_factory=list)
    #: extra raw drives the guest may write (a second disk whose partitions carry the device's
    #: own partition names: the guest must leave it alone)
    writable_drives: list[Path] = field(default_factory=list)
    #: boot through a qcow2 overlay so the base image stays untouched
    overlay: bool = False
    watchdog: bool = True
    disk_format: str = "raw"
    #: QEMU's cache mode for the system disk. "unsafe" ignores the guest's flushes (fast, fine
    #: for boots); power-cut tests use "writeback", so what the guest flushed (qcow2 metadata
    #: included) is on the host before a kill and only unflushed guest data is lost.
    cache: str = "unsafe"
    #: CPU model. TCG's default (qemu64) lacks SSSE3/SSE4.x, which numpy 2 needs (the frozen
    #: runtime dies with "invalid opcode"); "max" offers every feature the accelerator has:
    #: AVX2 and FMA (QEMU 7.2's TCG has no AVX-512 or AMX). TCG emulates each vector float
    #: operation with a helper call, so wider vectors are cheaper: the reference model costs
    #: 25.7 ms of CPU per frame under "max" or "Haswell", 36.7 ms under the SSE-only "Nehalem"
    #: (0.13 ms natively; tools/bench_vm_infer.py).
    cpu: str = ""
    #: the guest's architecture (Debian name): amd64 boots OVMF + GRUB, arm64 boots U-Boot
    #: (``-M virt``, Debian's u-boot-qemu as ``-bios``, or ``bios``) with its distro boot
    arch: str = "amd64"
    #: arm64: the U-Boot binary (default: Debian's qemu_arm64 build)
    bios: Path | None = None
    #: record every guest write to the virtio disks (QEMU trace event
    #: ``virtio_blk_handle_write``), so a test can act when the guest writes a given region
    #: (e.g. cut power while it writes a partition) instead of guessing with sleeps
    trace_writes: bool = False
    #: a USB 3 controller, so USB sticks can be plugged into the running VM (:meth:`Vm.plug_usb`)
    usb: bool = False
    #: every guest reset (reboot, watchdog) ends QEMU (``-no-reboot``) and the waits start it
    #: again on the same disk: a warm reset under TCG sometimes hangs in OVMF here (nothing
    #: after "reboot: machine restart" for minutes), a cold start has not
    relaunch_on_reset: bool = False

    def __post_init__(self) -> None:
        if self.arch not in QEMU_BINARIES:
            raise VmError(f"arch: expected one of {', '.join(QEMU_BINARIES)}, got {self.arch!r}")
        if not self.cpu:
            self.cpu = DEFAULT_CPU[self.arch]
        if self.accel not in {"tcg", "kvm"}:
            raise VmError(f"accel: expected 'tcg' or 'kvm', got {self.accel!r}")
        if self.cache not in {"unsafe", "writeback", "none", "writethrough", "directsync"}:
            raise VmError(f"cache: expected a QEMU cache mode (e.g. writeback), got {self.cache!r}")


def _netdev(config: VmConfig) -> str:
    """User-mode networking with the configured host and guest forwards."""
    netdev = "user,id=net0"
    for guest, host in sorted(config.forwards.items()):
        netdev += f",hostfwd=tcp:127.0.0.1:{host}-:{guest}"
    for where, argv in sorted(config.guest_commands.items()):
        if any("," in arg or " " in arg for arg in argv):
            raise VmError(f"guest_commands[{where!r}]: no commas or spaces in {argv}")
        netdev += f",guestfwd=tcp:{where}-cmd:{' '.join(argv)}"
    return netdev


def _machine(config: VmConfig, vars_file: Path) -> list[str]:
    """The machine and its firmware: q35 + OVMF (x86_64), virt + U-Boot (arm64)."""
    if config.arch == "arm64":
        bios = config.bios or UBOOT_QEMU_ARM64
        if not bios.is_file():
            raise VmError(
                f"{bios}: no U-Boot for qemu -M virt; install the Debian package 'u-boot-qemu'"
            )
        # U-Boot's own environment (second pflash) stays empty: its default environment runs
        # distro boot, and boot.scr keeps the A/B variables in files (docs/decisions.md §32).
        return ["-machine", "virt", "-bios", str(bios)]
    code = _find_firmware(OVMF_CODE_NAMES)
    return [
        "-machine", "q35",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}",
    ]  # fmt: skip


def qemu_command(
    config: VmConfig,
    disk: Path,
    vars_file: Path,
    serial_log: Path,
    write_trace: Path | None = None,
    qmp_socket: Path | None = None,
) -> list[str]:
    """The qemu-system argument list for ``config`` (pure: no side effects)."""
    netdev = _netdev(config)
    machine = _machine(config, vars_file)
    cmd = [
        QEMU_BINARIES[config.arch][0],
        "-accel", config.accel,
        *machine,
        "-cpu", config.cpu,
        "-m", str(config.memory_mb),
        "-smp", str(config.cpus),
        "-nographic",
        "-nodefaults",
        "-chardev", f"file,id=serial0,path={serial_log},append=on",
        "-serial", "chardev:serial0",
        "-drive", f"file={disk},format={config.disk_format},if=virtio,cache={config.cache}",
        "-netdev", netdev,
        "-device", "virtio-net-pci,netdev=net0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    for extra in config.extra_drives:
        cmd += ["-drive", f"file={extra},format=raw,if=virtio,readonly=on"]
    for extra in config.writable_drives:
        cmd += ["-drive", f"file={extra},format=raw,if=virtio"]
    if config.watchdog:
        # A hung guest must really reset: systemd drives this through RuntimeWatchdogSec.
        cmd += ["-device", "i6300esb", "-action", "watchdog=reset"]
    if config.relaunch_on_reset:
        cmd.append("-no-reboot")
    if config.usb:
        cmd += ["-device", "qemu-xhci,id=xhci"]
    if qmp_socket is not None:
        cmd += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    if config.trace_writes and write_trace is not None:
        cmd += ["-trace", f"enable={WRITE_EVENT},file={write_trace}"]
    return cmd


class Vm:
    """One virtual device: start it, read its serial console, cut its power, boot it again."""

    def __init__(self, config: VmConfig, workdir: Path | None = None) -> None:
        binary, package = QEMU_BINARIES[config.arch]
        if shutil.which(binary) is None:
            raise VmError(f"{binary} not found: install the Debian package '{package}'")
        if not config.disk.is_file():
            raise VmError(f"{config.disk}: no such disk image")
        self.config = config
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="edgekiln-vm-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log = self.workdir / "serial.log"
        self.write_trace = self.workdir / "writes-1.trace"  # set per QEMU process
        self.qmp_socket = self.workdir / "qmp.sock"
        self._plugged = 0
        self.vars_file = self.workdir / "OVMF_VARS.fd"
        if config.arch == "amd64":
            shutil.copyfile(_find_firmware(OVMF_VARS_NAMES), self.vars_file)
        self.disk = self._prepare_disk()
        self.process: subprocess.Popen[bytes] | None = None
        self.boots = 0  # power-ons
        self.launches = 0  # QEMU processes (a power-on, or a relaunch after a guest reset)
        self.resets = 0  # guest resets handled by a relaunch
        self._run_offset = 0
        self._hotplugged: list[Path] = []
        self._log_offset = 0

    def _prepare_disk(self) -> Path:
        if not self.config.overlay:
            return self.config.disk
        overlay = self.workdir / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", self.config.disk_format,
             "-b", str(self.config.disk.resolve()), str(overlay)],
            check=True, capture_output=True,
        )  # fmt: skip
        self.config = VmConfig(**{**self.config.__dict__, "disk_format": "qcow2"})
        return overlay

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Power on. The serial log keeps growing across boots; waits read from this boot on."""
        if self.running:
            raise VmError("the VM is already running")
        self._log_offset = self.serial_log.stat().st_size if self.serial_log.exists() else 0
        self._hotplugged = []  # what is plugged in at power-on is config.extra_drives
        self.boots += 1
        self._launch(self.config)

    def _launch(self, config: VmConfig) -> None:
        """Start a QEMU process on the disk (a power-on, or a reset with relaunch_on_reset)."""
        self.launches += 1
        self._run_offset = self.serial_log.stat().st_size if self.serial_log.exists() else 0
        # one trace file per QEMU process (offsets into it are per process); earlier ones stay
        # for the post-mortem of a failed test
        self.write_trace = self.workdir / f"writes-{self.launches}.trace"
        self.write_trace.unlink(missing_ok=True)
        self.qmp_socket.unlink(missing_ok=True)
        cmd = qemu_command(
            config, self.disk, self.vars_file, self.serial_log, self.write_trace, self.qmp_socket
        )
        stderr = (self.workdir / "qemu.stderr").open("ab")
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)

    def _relaunch_after_reset(self) -> bool:
        """With ``relaunch_on_reset``: if QEMU exited because the guest reset (rebooted, or its
        watchdog fired), start it again on the same disk and firmware variables, sticks that
        were hot-plugged still in (now attached at start); True if it did."""
        if not self.config.relaunch_on_reset or self.process is None:
            return False
        if self.process.poll() != 0:
            return False
        text = self.serial_log.read_bytes()[self._run_offset :].decode("utf-8", "replace")
        if "reboot: Power down" in text:  # the guest powered itself off: no reset
            return False
        drives = [*self.config.extra_drives, *self._hotplugged]
        self._launch(VmConfig(**{**self.config.__dict__, "extra_drives": drives}))
        self.resets += 1
        return True

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL QEMU, so nothing in the guest's caches reaches the disk."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process = None

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself (guest powered off); return its exit status."""
        if self.process is None:
            raise VmError("the VM is not running")
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise VmError(f"the VM did not power off within {timeout:.0f} s") from exc
        self.process = None
        return code

    def close(self) -> None:
        """Stop QEMU (if running) and remove the private work directory we created."""
        self.power_cut()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- console ---------------------------------------------------------------------------

    def console(self, whole: bool = False) -> str:
        """The serial output of the current boot (or of all boots with ``whole``)."""
        if not self.serial_log.exists():
            return ""
        data = self.serial_log.read_bytes()
        return data[0 if whole else self._log_offset :].decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float, *, since: int | None = None) -> re.Match[str]:
        """Wait until ``pattern`` (a regex) appears on the serial console of this boot."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            text = self.console()[since or 0 :]
            match = regex.search(text)
            if match:
                return match
            if self.process is not None and self.process.poll() is not None:
                if self._relaunch_after_reset():
                    continue
                raise VmError(
                    f"QEMU exited (status {self.process.returncode}) before {pattern!r} appeared; "
                    f"serial tail:\n{text[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise VmError(
                    f"{pattern!r} did not appear on the serial console within {timeout:.0f} s; "
                    f"serial tail:\n{text[-2000:]}"
                )
            time.sleep(0.2)

    # -- disk writes (config.trace_writes) ----------------------------------------------------

    def writes(self, since: int = 0) -> tuple[list[Write], int]:
        """Guest writes of this power-on after trace offset ``since``, and the offset to pass next.

        Only complete trace lines are returned (QEMU may be mid-line).
        """
        if not self.config.trace_writes:
            raise VmError("writes are recorded only with VmConfig(trace_writes=True)")
        try:
            data = self.write_trace.read_bytes()[since:]
        except FileNotFoundError:
            return [], since
        complete = data[: data.rfind(b"\n") + 1]
        return parse_writes(complete.decode("ascii", "replace")), since + len(complete)

    def trace_mark(self) -> int:
        """The current end of the write trace: pass it as ``since`` to see only later writes."""
        return self.writes()[1]

    def wait_write(
        self, start: int, end: int, timeout: float, *, min_bytes: int = 1, since: int = 0
    ) -> int:
        """Wait until the guest has written ``min_bytes`` into bytes [start, end) of its disks.

        Counts writes after trace offset ``since`` (see :meth:`trace_mark`); returns the bytes
        written there so far.
        """
        deadline = time.monotonic() + timeout
        written, mark = 0, since
        while True:
            new, mark = self.writes(mark)
            written += sum(w.overlap(start, end) for w in new)
            if written >= min_bytes:
                return written
            if self.process is not None and self.process.poll() is not None:
                if self._relaunch_after_reset():
                    mark = 0  # the new process writes a new trace
                    continue
                raise VmError(
                    f"QEMU exited (status {self.process.returncode}) after {written} of "
                    f"{min_bytes} bytes were written to [{start}, {end})"
                )
            if time.monotonic() > deadline:
                raise VmError(
                    f"the guest wrote {written} of {min_bytes} bytes to disk bytes "
                    f"[{start}, {end}) within {timeout:.0f} s; serial tail:\n"
                    f"{self.console()[-2000:]}"
                )
            time.sleep(0.05)

    # -- QMP: hot-plug ------------------------------------------------------------------------

    def qmp(
        self, command: str, arguments: dict[str, object] | None = None, timeout: float = 60.0
    ) -> object:
        """Run one QMP command on the running VM; returns its ``return`` value."""
        if not self.running:
            raise VmError(f"QMP {command}: the VM is not running")
        deadline = time.monotonic() + timeout
        while not self.qmp_socket.exists():  # QEMU creates it while starting up
            if time.monotonic() > deadline or not self.running:
                raise VmError(f"QMP socket {self.qmp_socket} did not appear within {timeout:.0f} s")
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.qmp_socket))
            stream = sock.makefile("rwb")
            _qmp_reply(stream)  # greeting
            for name, args in (("qmp_capabilities", {}), (command, arguments or {})):
                stream.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
                stream.flush()
                reply = _qmp_reply(stream)
                if "error" in reply:
                    raise VmError(f"QMP {name} {args}: {reply['error']}")
            return reply.get("return")

    def plug_usb(self, image: Path) -> str:
        """Plug a raw image in as a read-only USB stick (needs ``VmConfig(usb=True)``); returns
        the QEMU device id (for :meth:`unplug`)."""
        if not self.config.usb:
            raise VmError("USB hot-plug needs VmConfig(usb=True) (a USB controller)")
        self._plugged += 1
        self._hotplugged.append(image)
        node, device = f"stick{self._plugged}", f"usbstick{self._plugged}"
        self.qmp(
            "blockdev-add",
            {
                "driver": "raw",
                "node-name": node,
                "read-only": True,
                "file": {"driver": "file", "filename": str(image), "read-only": True},
            },
        )
        self.qmp(
            "device_add", {"driver": "usb-storage", "bus": "xhci.0", "drive": node, "id": device}
        )
        return device


def _qmp_reply(stream: Any) -> dict[str, Any]:
    """The next QMP message that is not an asynchronous event."""
    while True:
        line = stream.readline()
        if not line:
            raise VmError("QMP: QEMU closed the connection")
        message: dict[str, Any] = json.loads(line)
        if "event" not in message:
            return message
