"""``appliance api serve|pair-code|tokens|revoke``: the LAN API and its pairing."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from appliance import cli_options
from appliance.api.errors import InterfaceError
from appliance.errors import ApplianceError

ADDRESS_CHECK_S = 5.0
log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Callable

    from appliance.api.server import ApiServer
    from appliance.device import Device
    from appliance.discovery import Advertiser


def _device(data_dir: Path | None, keyring_path: Path | None, slots: tuple[str, ...]) -> Device:
    """The device from the environment, with the keyring and slot targets given here."""
    from appliance.device import Device

    device = Device.from_env(data_dir)
    changes: dict[str, object] = {}
    if keyring_path is not None:
        changes["keyring_path"] = keyring_path
    if slots:
        targets = dict(device.slot_targets)
        for value in slots:
            slot, sep, path = value.partition("=")
            if not sep or slot not in ("A", "B") or not path:
                raise click.BadParameter(f"{value!r}: use A=PATH or B=PATH", param_hint="--slot")
            targets[slot] = Path(path)
        changes["slot_targets"] = targets
    return dataclasses.replace(device, **changes) if changes else device  # type: ignore[arg-type]


@click.group()
def api() -> None:
    """The LAN API for technicians' laptops (off unless the recipe or the TUI turns it on)."""


@api.command()
@click.option("--interface", "-i", help="LAN interface to listen on (its IPv4 address).")
@click.option("--bind", help="Listen on this address instead (tests, development).")
@click.option("--port", type=int, default=8443, show_default=True)
@cli_options.data_dir_option("Data partition mount (default: device.json).")
@cli_options.keyring_option()
@click.option("--slot", "slots", multiple=True, help="Slot device or image: A=PATH / B=PATH.")
@click.option("--max-upload", type=int, default=4 * 1024**3, show_default=True)
@click.option("--stall-timeout", type=float, default=30.0, show_default=True)
@click.option("--mdns/--no-mdns", default=True, help="Advertise _edgekiln._tcp (zeroconf).")
@click.option("--simulate-reboot", is_flag=True, help="Report reboots instead (development).")
@click.option(
    "--pair-on-start/--no-pair-on-start",
    default=True,
    show_default=True,
    help="While no laptop is paired, open pairing at start: a code on the console.",
)
@click.option(
    "--console",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where a pairing code is written besides the journal (default: /dev/console).",
)
def serve(
    interface: str | None,
    bind: str | None,
    port: int,
    data_dir: Path | None,
    keyring_path: Path,
    slots: tuple[str, ...],
    max_upload: int,
    stall_timeout: float,
    mdns: bool,
    simulate_reboot: bool,
    pair_on_start: bool,
    console: Path | None,
) -> None:
    """Serve the API on the LAN interface's address only, until SIGTERM."""
    from appliance.api.netif import interface_address
    from appliance.api.server import ApiConfig, ApiServer

    if (interface is None) == (bind is None):
        raise click.UsageError("pass exactly one of --interface IFACE or --bind ADDRESS")
    device = _device(data_dir, keyring_path, slots)
    if simulate_reboot:
        device = dataclasses.replace(device, demo=True)

    def address() -> str:
        return bind if bind is not None else interface_address(str(interface))

    from appliance.api.faults import fault_injection_enabled

    # Only the image decides (a marker in the read-only slot), never an option or data.
    faulty = fault_injection_enabled()
    if faulty:
        log.warning("fault injection enabled by this image (test profile): POST /v1/fault/*")
    server = ApiServer(
        ApiConfig(
            device,
            address(),
            port,
            max_upload=max_upload,
            stall_timeout_s=stall_timeout,
            fault_injection=faulty,
        )
    )
    if pair_on_start:
        where = console or device.sys_path("/dev/console")
        _open_pairing_if_unpaired(device, where, server.fingerprint)
    advertiser = _advertiser(device, server, port, address) if mdns else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    click.echo(
        f"LAN API on https://{server.server_address[0]!s}:{server.server_address[1]} "
        f"(certificate {server.fingerprint})",
        err=True,
    )
    bound = str(server.server_address[0])
    moved: str | None = None
    try:
        while not stop.wait(ADDRESS_CHECK_S):
            if interface is None:
                continue
            try:
                now = address()
            except ApplianceError as exc:
                now = f"none ({exc})"
            if now != bound:
                moved = now
                break
    except KeyboardInterrupt:
        pass
    finally:
        if advertiser is not None:
            advertiser.close()
        server.shutdown()
        server.server_close()
    if moved is not None:
        # systemd (Restart=always) starts the API again, listening and advertised on the new one
        raise InterfaceError(
            f"the address of LAN interface {interface} changed from {bound} to {moved}: "
            "stopped; start again to listen there"
        )


def _advertiser(
    device: Device, server: ApiServer, port: int, address: Callable[[], str]
) -> Advertiser:
    """The ``_edgekiln._tcp`` advertisement, its TXT values re-read from the device's state."""
    import time

    from appliance.api.diag import identity
    from appliance.discovery import Advertiser
    from appliance.tui.devstatus import collect_status

    def snapshot() -> tuple[str, dict[str, str]]:
        ident = identity(device)
        st = collect_status(device, time.time())
        props = {
            "id": ident["id"],
            "name": ident["name"],
            "site": ident["site"],
            "target": ident["target"],
            "version": st.version if st.version not in ("", "-") else ident["version"],
            "slot": st.booted,
            "mode": st.mode,
            "port": str(port),
            "fp": server.fingerprint,
        }
        return address(), props

    return Advertiser(device.device_id(), port, snapshot)


def _open_pairing_if_unpaired(device: Device, console: Path, fingerprint: str) -> None:
    """A device nobody paired with yet shows its certificate and a code on its console at
    start (the code valid 5 min): what ``kiln pair`` needs, read where the Pair screen is not
    at hand; later codes come from the Pair screen or ``appliance api pair-code``. Not when a
    code is pending: it was shown already (the Pair screen makes one before it starts the
    service, so nothing is written over the TUI; a restarted service keeps its first code)."""
    from appliance.api.auth import TokenStore, code_pending, new_pair_code, show_on_console

    api_dir = device.state_dir / "api"
    if TokenStore(api_dir).load().tokens or code_pending(api_dir):
        return
    sysfs = device.sys_path("/sys/class/tty")
    show_on_console(f"edgekiln: LAN API certificate {fingerprint}", console, sysfs)
    new_pair_code(api_dir, console=console, sysfs=sysfs)


@api.command("pair-code")
@cli_options.data_dir_option("Data partition mount (default: device.json).")
def pair_code(data_dir: Path | None) -> None:
    """Make a one-time pairing code (valid 5 minutes) and print it (also on the console)."""
    from appliance.api.auth import new_pair_code

    device = _device(data_dir, None, ())
    code = new_pair_code(
        device.state_dir / "api",
        console=device.sys_path("/dev/console"),
        sysfs=device.sys_path("/sys/class/tty"),
    )
    click.echo(code)


@api.command()
@cli_options.data_dir_option("Data partition mount (default: device.json).")
def tokens(data_dir: Path | None) -> None:
    """List paired laptops (name, when, token hash prefix)."""
    import time

    from appliance.api.auth import TokenStore

    device = _device(data_dir, None, ())
    for record in TokenStore(device.state_dir / "api").load().tokens:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(record.created))
        click.echo(f"{record.sha256[:12]}  {when}  {record.name}")


@api.command()
@click.argument("name_or_hash")
@cli_options.data_dir_option("Data partition mount (default: device.json).")
def revoke(name_or_hash: str, data_dir: Path | None) -> None:
    """Revoke the tokens of a laptop (by name, or by hash prefix of 8+ characters)."""
    from appliance.api.auth import TokenStore

    device = _device(data_dir, None, ())
    count = TokenStore(device.state_dir / "api").revoke(name_or_hash)
    if not count:
        raise click.ClickException(f"no paired laptop named {name_or_hash!r}")
    device.log_action("api-revoke", which=name_or_hash, count=count)
    click.echo(f"revoked {count} token(s)")
