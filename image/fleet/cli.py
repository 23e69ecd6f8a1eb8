"""``kiln fleet``: ingest device telemetry, show the inventory and anomalies, write the report."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import click

from image.fleet.errors import FleetError
from image.fleet.ingest import BrokerUrl, Ingester
from image.fleet.inventory import inventory
from image.fleet.peers import anomalies
from image.fleet.store import Store

DEFAULT_DB = "fleet.db"
db_option = click.option(
    "--db",
    default=DEFAULT_DB,
    show_default=True,
    help="SQLite file (or sqlite:///path) or postgresql://... (same schema).",
)


@click.group()
def fleet() -> None:
    """The operator's view of the fleet: MQTT telemetry into SQLite or PostgreSQL."""


@fleet.command()
@click.option("--broker", required=True, help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
@db_option
@click.option("--group", default="kiln-fleet", show_default=True, help="Shared-subscription group.")
@click.option("--client-id", default=None, help="Stable per ingester (keeps its session).")
@click.option("--prefix", default="edgekiln", show_default=True, help="Topic prefix.")
@click.option("--ca-file", default=None, help="CA of the broker's certificate (mqtts).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics here.")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True)
@click.option(
    "--retire",
    is_flag=True,
    help="Store what waits in this --client-id's session, then end the session and exit.",
)
def ingest(
    broker: str,
    db: str,
    group: str,
    client_id: str | None,
    prefix: str,
    ca_file: str | None,
    metrics_port: int | None,
    metrics_addr: str,
    retire: bool,
) -> None:
    """Store device windows and events until SIGTERM / Ctrl-C (idempotent by message id)."""
    logging.getLogger("image.fleet").setLevel(logging.INFO)  # progress lines on stderr
    store = Store.open(db)
    metrics = None
    if metrics_port is not None:
        from image.fleet.metrics import FleetMetrics

        metrics = FleetMetrics()
        metrics.serve(metrics_port, metrics_addr)
    cid = client_id or f"kiln-fleet-{socket.gethostname()}-{os.getpid()}"
    ingester = Ingester(
        BrokerUrl.parse(broker),
        store,
        client_id=cid,
        group=group,
        prefix=prefix,
        ca_file=ca_file,
        metrics=metrics,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"ingesting from {broker} into {store.url} as {cid} (group {group})", err=True)
    if retire:
        if client_id is None:
            raise FleetError("--retire needs the --client-id of the ingester to retire")
        ingester.retire()
    else:
        ingester.run(stop)
    click.echo(
        f"stored {ingester.stored}, duplicates {ingester.duplicates}, rejected {ingester.rejected}",
        err=True,
    )
    store.close()


@fleet.command()
@db_option
@click.option("--site", default=None)
@click.option("--target", default=None)
@click.option("--version", "version", default=None)
@click.option("--stale", type=float, default=None, help="Only devices silent this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.option("--anomalies/--no-anomalies", "show_flags", default=True, show_default=True)
def status(
    db: str,
    site: str | None,
    target: str | None,
    version: str | None,
    stale: float | None,
    as_json: bool,
    show_flags: bool,
) -> None:
    """The inventory (site, target, version, slot, mode, last seen, last update outcome, alerts)
    and peer anomalies."""
    if not Path(db).exists() and "://" not in db:
        raise FleetError(f"{db}: no fleet database here; run `kiln fleet ingest --db {db}` first")
    store = Store.open(db)
    rows = inventory(store, site=site, target=target, version=version, stale_after_s=stale)
    flags = anomalies(store) if show_flags else []
    if as_json:
        for r in rows:
            click.echo(json.dumps(r.__dict__, sort_keys=True))
        for f in flags:
            click.echo(json.dumps({"anomaly": f.__dict__}, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "device", "site", "target", "version", "slot", "mode", "last seen", "last update",
        "alerts",
    )  # fmt: skip
    import time as _time

    for r in rows:
        seen = _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(r.last_seen))
        table.add_row(
            r.device,
            r.site,
            r.target,
            r.version or "",
            r.slot or "",
            r.mode or "",
            seen,
            (r.last_update or "").partition(":")[0],  # the outcome's name; --json has the reason
            str(r.alerts) + (" drift" if r.drifted else ""),
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: keep every column readable
        console = Console(width=160)
    console.print(table)
    for f in flags:
        console.print(f"[red]anomaly[/red] {f.describe()}")


@fleet.command()
@db_option
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("fleet-report.html"))
def report(db: str, out: Path) -> None:
    """Write the fleet report: one HTML page with inline charts that opens offline."""
    from image.fleet.report import write

    store = Store.open(db)
    write(store, out)
    click.echo(str(out))
