"""``appliance install SRC``: a bundle from a file, ``-`` (stdin) or an HTTP(S) URL."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click

from appliance import cli_options


def _slot_paths(values: tuple[str, ...]) -> dict[str, Path]:
    from appliance.ota.installer import DEFAULT_TARGETS

    paths: dict[str, Path] = {k: v for k, v in DEFAULT_TARGETS.items()}
    for value in values:
        slot, sep, path = value.partition("=")
        if not sep or slot not in ("A", "B") or not path:
            raise click.BadParameter(f"{value!r}: use A=PATH or B=PATH", param_hint="--slot")
        paths[slot] = Path(path)
    return paths


@click.command()
@click.argument("src")
@cli_options.loader_option()
@cli_options.booted_option()
@cli_options.data_dir_option(
    "Data partition mount: floor, rotated keyring, install record (default: device.json)."
)
@cli_options.keyring_option()
@click.option("--product", envvar="EDGEKILN_PRODUCT", help="This product (default: device.json).")
@click.option("--target", envvar="EDGEKILN_TARGET", help="Hardware target (default: device.json).")
@click.option("--slot", "slots", multiple=True, help="Slot device or image: A=PATH / B=PATH.")
@click.option(
    "--trusted-time",
    help="Enforce expiry at this Unix time, or 'now' (default: the clock when it was synced "
    "since boot, else expiry is not checked and the output says so).",
)
@click.option(
    "--hash-readback",
    is_flag=True,
    help="Also sha256 the slot as re-read (it is always compared with the verified chunks).",
)
def install(
    src: str,
    loader_spec: str | None,
    booted: str | None,
    data_dir: Path | None,
    keyring_path: Path,
    product: str | None,
    target: str | None,
    slots: tuple[str, ...],
    trusted_time: str | None,
    hash_readback: bool,
) -> None:
    """Verify and write a bundle into the inactive slot; the next boot tries it once."""
    from appliance.bundle import Policy, effective_keyring
    from appliance.device import Device
    from appliance.ota.clock import trusted_now
    from appliance.ota.installer import install as do_install
    from appliance.ota.source import open_stream
    from appliance.slots.booted import booted_slot
    from appliance.slots.config import open_loader
    from appliance.slots.state import parse_slot
    from appliance.state import security_floor

    device = Device.from_env(data_dir)
    data_dir = device.data_dir
    product = product or device.config.product
    target = target or device.config.target
    if "unknown" in (product, target):
        raise click.UsageError(
            "this device's product/target are unknown: pass --product and --target "
            "(or provide /etc/edgekiln/device.json)"
        )
    slot = parse_slot(booted) if booted else booted_slot()
    assert slot is not None
    now = trusted_now(data_dir)
    if trusted_time == "now":
        now = int(time.time())
    elif trusted_time is not None:
        if not trusted_time.isdigit():
            raise click.BadParameter("a Unix time or 'now'", param_hint="--trusted-time")
        now = int(trusted_time)
    policy = Policy(
        keyring=effective_keyring(keyring_path, data_dir),
        product=product,
        target=target,
        min_security_version=security_floor(data_dir, device.config.security_version),
        trusted_now=now,
        running_version=device.config.version if device.config.version != "unknown" else None,
    )
    with contextlib.ExitStack() as stack:
        stream, label = open_stream(src, stack)
        progress = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            bar = stack.enter_context(Progress(transient=True))
            task = bar.add_task("installing", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

        result = do_install(
            stream,
            policy=policy,
            loader=open_loader(loader_spec),
            booted=slot,
            source=label,
            targets=_slot_paths(slots),  # type: ignore[arg-type]
            data_dir=data_dir,
            progress=progress,
            hash_readback=hash_readback,
        )
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(
        f"installed {result.version} into slot {result.slot} ({result.image_size} bytes, "
        f"sha256 {result.image_sha256}); reboot to try it"
    )
