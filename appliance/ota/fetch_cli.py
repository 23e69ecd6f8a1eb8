"""``appliance update fetch URL``: resumable, verified, rate-limited download into data."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.bundle.keyring import DEVICE_KEYRING


@click.group()
def update() -> None:
    """Fetch update bundles (HTTP Range, resumable across reboots)."""


def _rate(text: str | None) -> int | None:
    """'500k', '2M', '100000' -> bytes per second."""
    if text is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mult = units.get(text[-1].lower(), 1)
    digits = text[:-1] if text[-1].lower() in units else text
    if not digits.isdigit() or int(digits) == 0:
        raise click.BadParameter(
            f"{text!r}: bytes per second, e.g. 200k or 2M", param_hint="--rate"
        )
    return int(digits) * mult


@update.command()
@click.argument("url")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEKILN_DATA",
    help="Data partition mount (downloads go to DATA/updates).",
)  # fmt: skip
@click.option(
    "--keyring", "keyring_path", type=click.Path(dir_okay=False, path_type=Path),
    default=DEVICE_KEYRING, show_default=True,
)  # fmt: skip
@click.option("--product", envvar="EDGEKILN_PRODUCT", help="This product (default: device.json).")
@click.option("--target", envvar="EDGEKILN_TARGET", help="Hardware target (default: device.json).")
@click.option("--rate", help="Bandwidth cap in bytes/s (suffix k, M), e.g. 200k.")
@click.option("--window", help="Allowed daily window, UTC, HH:MM-HH:MM (may wrap midnight).")
@click.option("--retries", type=click.IntRange(0, 100), default=3, show_default=True)
def fetch(
    url: str, data_dir: Path | None, keyring_path: Path, product: str | None,
    target: str | None, rate: str | None, window: str | None, retries: int,
) -> None:  # fmt: skip
    """Download URL into DATA/updates, verifying every chunk; prints the bundle's path.

    Run it again after an interruption (or a reboot): it resumes from the journal and fetches
    at most the one chunk that was in flight again. Exit 75 outside --window.
    """
    from appliance.bundle import Policy, effective_keyring
    from appliance.device import Device
    from appliance.ota.fetch import Window
    from appliance.ota.fetch import fetch as do_fetch
    from appliance.state import security_floor

    device = Device.from_env(data_dir)
    policy = Policy(
        keyring=effective_keyring(keyring_path, device.data_dir),
        product=product or device.config.product,
        target=target or device.config.target,
        min_security_version=security_floor(device.data_dir),
    )
    path = do_fetch(
        url, device.data_dir / "updates", policy, rate=_rate(rate),
        window=Window.parse(window) if window else None, retries=retries,
    )  # fmt: skip
    click.echo(str(path))
