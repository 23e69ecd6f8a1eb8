"""Network settings: list interfaces, validate a DHCP/static IPv4 form, write .network files.

Pure logic and thin edges; no Textual here. A setting becomes ``10-edgekiln-<iface>.network`` in
the data partition's systemd-networkd directory (written atomically), then ``networkctl reload``
applies it. Validation returns one message per bad field, so the form can show each in place.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path

from appliance.fsutil import atomic_write_bytes

IFACE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


@dataclasses.dataclass(frozen=True)
class Interface:
    """One network interface as the kernel shows it."""

    name: str
    mac: str
    state: str
    addresses: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class NetSetting:
    """What the technician asked for on one interface."""

    iface: str
    dhcp: bool
    address: str = ""  # CIDR, e.g. 192.168.1.20/24
    gateway: str = ""
    dns: tuple[str, ...] = ()


def list_interfaces(sys_class_net: Path, with_addresses: bool = True) -> list[Interface]:
    """Interfaces under ``sys_class_net`` (not ``lo``), with IPv4 addresses from ``ip -j``."""
    addrs = _ip_addresses() if with_addresses else {}
    out = []
    for entry in sorted(sys_class_net.glob("*")):
        if entry.name == "lo":
            continue
        out.append(
            Interface(
                entry.name,
                _read(entry / "address") or "-",
                _read(entry / "operstate") or "unknown",
                tuple(addrs.get(entry.name, ())),
            )
        )
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _ip_addresses() -> dict[str, list[str]]:
    exe = shutil.which("ip")
    if exe is None:
        return {}
    proc = subprocess.run([exe, "-j", "-4", "addr", "show"], check=False, capture_output=True)
    if proc.returncode != 0:
        return {}
    try:
        data = json.loads(proc.stdout or b"[]")
    except ValueError:
        return {}
    return {
        str(i.get("ifname")): [
            f"{a.get('local')}/{a.get('prefixlen')}" for a in i.get("addr_info", [])
        ]
        for i in data
        if isinstance(i, dict)
    }


def validate(setting: NetSetting) -> dict[str, str]:
    """Field name -> what is wrong with it (empty when the setting may be written)."""
    errors: dict[str, str] = {}
    if not IFACE_RE.match(setting.iface):
        errors["iface"] = "choose an interface"
    if setting.dhcp:
        return errors
    iface, problem = _check_address(setting.address.strip())
    if problem:
        errors["address"] = problem
    if setting.gateway.strip():
        problem = _check_gateway(setting.gateway.strip(), iface)
        if problem:
            errors["gateway"] = problem
    bad_dns = [server for server in setting.dns if not _is_ipv4(server)]
    if bad_dns:
        errors["dns"] = f"not IPv4 addresses: {', '.join(bad_dns)}"
    return errors


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _check_address(text: str) -> tuple[ipaddress.IPv4Interface | None, str | None]:
    """The parsed address (None when unusable) and what is wrong with it."""
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError:
        return None, "not an IPv4 address with prefix, e.g. 192.168.1.20/24"
    if "/" not in text:
        return None, "add the prefix length, e.g. /24"
    net = iface.network
    if not 8 <= net.prefixlen <= 30:
        return None, "prefix length must be /8 to /30"
    if iface.ip in (net.network_address, net.broadcast_address):
        return None, f"{iface.ip} is the network or broadcast address of {net}"
    if iface.ip.is_loopback or iface.ip.is_multicast or iface.ip.is_unspecified:
        return None, f"{iface.ip} cannot be a host address"
    return iface, None


def _check_gateway(text: str, iface: ipaddress.IPv4Interface | None) -> str | None:
    try:
        gw = ipaddress.IPv4Address(text)
    except ValueError:
        return "not an IPv4 address, e.g. 192.168.1.1"
    if iface is None:
        return None  # the address is wrong already; judge the gateway once it is fixed
    if gw not in iface.network:
        return f"{gw} is outside the subnet {iface.network}"
    if gw == iface.ip:
        return "the gateway cannot be the device's own address"
    if gw in (iface.network.network_address, iface.network.broadcast_address):
        return f"{gw} is the network or broadcast address"
    return None


def parse_dns(text: str) -> tuple[str, ...]:
    """DNS servers typed as ``1.1.1.1, 9.9.9.9`` (commas or spaces)."""
    return tuple(p for p in re.split(r"[,\s]+", text.strip()) if p)


def render(setting: NetSetting) -> str:
    """The systemd-networkd ``.network`` file for a validated setting."""
    lines = ["# written by appliance tui", "[Match]", f"Name={setting.iface}", "", "[Network]"]
    if setting.dhcp:
        lines.append("DHCP=ipv4")
    else:
        lines.append(f"Address={setting.address.strip()}")
        if setting.gateway.strip():
            lines.append(f"Gateway={setting.gateway.strip()}")
        lines.extend(f"DNS={server}" for server in setting.dns)
    return "\n".join(lines) + "\n"


def file_for(network_dir: Path, iface: str) -> Path:
    """Where the setting of ``iface`` lives."""
    return network_dir / f"10-edgekiln-{iface}.network"


def read_setting(network_dir: Path, iface: str) -> NetSetting | None:
    """The setting written earlier for ``iface`` (None if there is none)."""
    try:
        text = file_for(network_dir, iface).read_text()
    except OSError:
        return None
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), []).append(value.strip())
    dhcp = bool(values.get("DHCP"))
    return NetSetting(
        iface,
        dhcp,
        (values.get("Address") or [""])[0],
        (values.get("Gateway") or [""])[0],
        tuple(values.get("DNS", [])),
    )


def write_setting(network_dir: Path, setting: NetSetting) -> Path:
    """Validate and write ``setting`` atomically; raises ValueError naming the bad fields."""
    errors = validate(setting)
    if errors:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    network_dir.mkdir(parents=True, exist_ok=True)
    path = file_for(network_dir, setting.iface)
    atomic_write_bytes(path, render(setting).encode())
    return path


def apply(demo: bool = False) -> str:
    """``networkctl reload``: what happened, as one line for the technician."""
    if demo:
        return "demo device: a real device would run `networkctl reload` now"
    exe = shutil.which("networkctl")
    if exe is None:
        return "networkctl not found (no systemd-networkd here): file written, not applied"
    proc = subprocess.run([exe, "reload"], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"networkctl reload failed: {proc.stderr.strip() or proc.returncode}"
    return "applied (networkctl reload)"
