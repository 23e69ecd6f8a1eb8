"""``kiln discover|pair|status|push|diag``: the technician's laptop on the site LAN."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import click

from image.lan.errors import LanError, UnknownDevice
from image.lan.store import PairedDevice, PairedStore, split_host_port

MDNS_HELP = "Query mDNS only via this local IPv4 address (default: every interface)."


def _interfaces(value: str | None) -> list[str] | None:
    return [value] if value else None


@click.command()
@click.option("--seconds", "-t", type=float, default=3.0, show_default=True)
@click.option("--mdns-interface", envvar="KILN_MDNS_INTERFACE", help=MDNS_HELP)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def discover(seconds: float, mdns_interface: str | None, as_json: bool) -> None:
    """List the devices that answer on the LAN within SECONDS."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from image.lan.browse import browse

    seen = browse(seconds, _interfaces(mdns_interface))
    if as_json:
        for s in seen:
            click.echo(json.dumps({"address": s.address, "port": s.port, **s.txt}))
        return
    table = Table(title=f"{len(seen)} device(s) seen within {seconds:g} s")
    for column in ("id", "name", "site", "target", "version", "slot", "mode", "address", "fp"):
        table.add_column(column)
    for s in seen:
        t = s.txt
        cells = [s.id, *(t.get(k, "") for k in ("name", "site", "target", "version", "slot"))]
        cells += [t.get("mode", ""), f"{s.address}:{s.port}", t.get("fp", "")[:19] + "…"]
        # TXT values are unauthenticated: shown as plain text, never as console markup
        table.add_row(*(Text(c) for c in cells))
    Console().print(table)


@click.command()
@click.argument("device")
@click.option("--code", prompt="pairing code (device's Pair screen)", help="The one-time code.")
@click.option("--fingerprint", help="The certificate fingerprint shown on the Pair screen.")
@click.option("--name", default=lambda: f"{os.environ.get('USER', 'tech')}@{socket.gethostname()}")
@click.option("--seconds", type=float, default=3.0, help="mDNS wait when no --fingerprint.")
@click.option("--mdns-interface", envvar="KILN_MDNS_INTERFACE", help=MDNS_HELP)
def pair(
    device: str,
    code: str,
    fingerprint: str | None,
    name: str,
    seconds: float,
    mdns_interface: str | None,
) -> None:
    """Pair with DEVICE (ADDRESS[:PORT] or a discovered id/name); pins its certificate."""
    from image.lan.client import DeviceClient

    host, port = split_host_port(device)
    if fingerprint is None:
        from image.lan.browse import browse

        for seen in browse(seconds, _interfaces(mdns_interface)):
            if device in (seen.id, seen.txt.get("name")) or seen.address == host:
                host, port, fingerprint = seen.address, seen.port, seen.txt.get("fp")
                break
        if not fingerprint:
            raise UnknownDevice(
                f"{device}: not seen on the LAN within {seconds:g} s: pass --fingerprint "
                "(shown on the device's Pair screen)"
            )
    reply = DeviceClient(host, port, fingerprint).json(
        "POST", "/v1/pair", {"code": code.strip(), "name": name}
    )
    paired = PairedDevice(
        id=str(reply["id"]),
        name=str(reply.get("name") or reply["id"]),
        site=str(reply.get("site", "")),
        address=host,
        port=port,
        fingerprint=fingerprint,
        token=str(reply["token"]),
    )
    PairedStore().add(paired)
    click.echo(f"paired {paired.label} at {host}:{port}, certificate {fingerprint}")


@click.command()
@click.argument("device")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--events",
    "last",
    type=click.IntRange(0, 500),
    default=0,
    help="Also the device's last N events (GET /v1/events).",
)
def status(device: str, as_json: bool, last: int) -> None:
    """Identity, slots, version and health of a paired DEVICE."""
    from image.lan.push import client_for

    client = client_for(PairedStore().find(device))
    reply = client.json("GET", "/v1/status")
    if last:
        total = int(client.json("GET", "/v1/events?offset=0&limit=1")["total"])
        page = client.json("GET", f"/v1/events?offset={max(0, total - last)}&limit={last}")
        reply["events"] = page["items"]
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    st = reply.get("status", {})
    click.echo(f"{reply['name']} ({reply['id']}) site {reply.get('site') or '-'}")
    for key in (
        "product",
        "target",
        "version",
        "booted",
        "committed",
        "next_boot",
        "health",
        "mode",
        "mode_reason",
    ):
        click.echo(f"  {key:12} {st.get(key, reply.get(key, '-'))}")
    for event in reply.get("events", []):
        click.echo(f"  event        {event_line(event)}")


def event_line(event: object) -> str:
    """One event as ``UTC-time kind key=value ...`` (plain text, control characters dropped)."""
    if not isinstance(event, dict):
        return str(event)
    when = event.get("time", event.get("ts"))
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(str(when))))
    except (TypeError, ValueError):
        stamp = "-"
    skip = {"time", "ts", "kind", "type"}
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip)
    text = f"{stamp} {event.get('kind', '?')} {rest}"
    return "".join(c for c in text if c.isprintable())[:300]


@click.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("devices", nargs=-1)
@click.option("--site", help="Every paired device at this site.")
@click.option("--all", "every", is_flag=True, help="Every paired device.")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--reboot", is_flag=True, help="Reboot each device into the new slot after it.")
@click.option(
    "--tls",
    "tls_only",
    is_flag=True,
    help="Send the bundle inside TLS too (slower; by default only a one-time ticket is).",
)
def push(
    bundle: Path,
    devices: tuple[str, ...],
    site: str | None,
    every: bool,
    timeout: float,
    reboot: bool,
    tls_only: bool,
) -> None:
    """Install BUNDLE on DEVICES (or --site S, or --all) in parallel; summary at the end.

    Each device puts the new slot on trial; with --reboot it boots it at once (its agent
    commits it after the health check), else at its next reboot."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from image.lan.push import push as do_push

    if sum(bool(x) for x in (devices, site, every)) != 1:
        raise click.UsageError("name DEVICES, or pass --site S, or --all (one of them)")
    targets = PairedStore().select(devices, site, every)
    results = do_push(
        bundle, targets, show=sys.stderr.isatty(), timeout=timeout, reboot=reboot, tls_only=tls_only
    )
    table = Table(title=f"{bundle.name}: {sum(r.ok for r in results)}/{len(results)} installed")
    table.add_column("device")
    table.add_column("result")
    for r in results:
        table.add_row(Text(r.device.label), Text(r.detail, style="green" if r.ok else "red"))
    Console(width=200).print(table)
    if not all(r.ok for r in results):
        raise LanError(f"{sum(not r.ok for r in results)} device(s) failed (see above)")


@click.command()
@click.argument("device")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def diag(device: str, output: Path) -> None:
    """Save DEVICE's diagnostics tar (versions, slots, env, events, journal, config)."""
    from image.lan.push import client_for

    with output.open("wb") as out:
        size = client_for(PairedStore().find(device)).download("/v1/diag", out)
    click.echo(f"wrote {output} ({size} bytes)")
