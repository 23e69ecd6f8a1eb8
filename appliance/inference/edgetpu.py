"""Finding a Coral Edge TPU: the USB Accelerator by its two USB identities, or a PCIe one.

The USB Accelerator enumerates as ``1a6e:089a`` (Global Unichip) until libedgetpu has loaded its
firmware into it, then re-enumerates as ``18d1:9302`` (Google); both mean "an Edge TPU is
plugged in" (the first one still needs the firmware that the delegate sends when it loads).
The Dev Board and the M.2 / mini-PCIe modules have a PCIe Edge TPU, which the ``apex`` driver
shows as ``/sys/class/apex/apex_N``. Everything is read from sysfs under ``root`` (``/sys`` on
the device; tests build a tree of their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

USB_IDS: dict[tuple[str, str], str] = {
    ("1a6e", "089a"): "needs-firmware",  # Global Unichip: before the firmware is loaded
    ("18d1", "9302"): "ready",  # Google: firmware loaded
}


@dataclass(frozen=True)
class EdgeTpu:
    """One Edge TPU: ``usb`` or ``pci``, where in sysfs, and (USB) whether firmware is loaded."""

    bus: str
    sysfs: str  # e.g. "2-1" (a USB device) or "apex_0"
    state: str  # needs-firmware | ready

    @property
    def delegate_device(self) -> str:
        """libedgetpu's ``device`` option for the first device of this bus type."""
        return f"{self.bus}:0"

    def describe(self) -> str:
        if self.bus == "pci":
            return f"PCIe Edge TPU {self.sysfs}"
        ident = next(f"{v}:{p}" for (v, p), s in USB_IDS.items() if s == self.state)
        return f"USB Accelerator {ident} at {self.sysfs} ({self.state})"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip().lower()
    except OSError:
        return ""


def find_edgetpus(root: Path = Path("/sys")) -> list[EdgeTpu]:
    """Every Edge TPU sysfs shows, USB first (sorted by sysfs name); [] when there is none."""
    found = []
    usb = root / "bus" / "usb" / "devices"
    for dev in sorted(usb.glob("*")) if usb.is_dir() else []:
        state = USB_IDS.get((_read(dev / "idVendor"), _read(dev / "idProduct")))
        if state is not None:
            found.append(EdgeTpu("usb", dev.name, state))
    apex = root / "class" / "apex"
    for dev in sorted(apex.glob("apex_*")) if apex.is_dir() else []:
        found.append(EdgeTpu("pci", dev.name, "ready"))
    return found


def missing_reason(root: Path = Path("/sys")) -> str:
    """Why no Edge TPU is usable here, naming what was looked for."""
    ids = " or ".join(f"{v}:{p}" for v, p in USB_IDS)
    return (
        f"no Edge TPU found: no USB device {ids} under {root}/bus/usb/devices and no "
        f"{root}/class/apex/apex_*; plug the Coral USB Accelerator in (a USB 3 port) or check "
        "the apex driver"
    )
