"""The LAN interface the API listens on: its name (the default route's) and IPv4 address."""

from __future__ import annotations

import socket
from pathlib import Path

from appliance.api.errors import InterfaceError


def default_interface(proc_route: Path = Path("/proc/net/route")) -> str:
    """The interface of the IPv4 default route, else the first non-loopback one."""
    try:
        for line in proc_route.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "00000000":
                return fields[0]
    except OSError:
        pass
    names = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    if not names:
        raise InterfaceError("no LAN interface found (only lo): check the network settings")
    return names[0]


def interface_address(name: str) -> str:
    """The IPv4 address of interface ``name`` (``auto``: :func:`default_interface`)."""
    import fcntl
    import struct

    if name == "auto":
        name = default_interface()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise InterfaceError(
                f"LAN interface {name!r} has no IPv4 address ({exc.strerror}): check the "
                "network settings (TUI Network screen) or pass --interface"
            ) from None
    return socket.inet_ntoa(packed[20:24])
