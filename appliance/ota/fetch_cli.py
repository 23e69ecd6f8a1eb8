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


@update.command()
@click.argument("repo_url")
@click.option(
    "--tuf-root", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
    help="The channel's trusted root.json (baked into the image).",
)  # fmt: skip
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="EDGEKILN_DATA"
)
@click.option("--keyring", "keyring_path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEVICE_KEYRING, show_default=True)  # fmt: skip
@click.option("--product", envvar="EDGEKILN_PRODUCT")
@click.option("--target", envvar="EDGEKILN_TARGET")
@click.option("--active", "active_path", type=click.Path(exists=True, path_type=Path),
              help="The active slot device or image (to find its delta).")  # fmt: skip
@click.option("--active-size", type=int, help="Bytes of the active slot image to hash.")
@click.option("--fetch/--no-fetch", "do_fetch", default=False, help="Also download the choice.")
@click.option("--rate", help="Bandwidth cap for --fetch, e.g. 200k.")
def poll(
    repo_url: str, tuf_root: Path, data_dir: Path | None, keyring_path: Path,
    product: str | None, target: str | None, active_path: Path | None,
    active_size: int | None, do_fetch: bool, rate: str | None,
) -> None:  # fmt: skip
    """Ask the TUF channel at REPO_URL what to install; print the choice (and fetch it)."""
    import hashlib

    from appliance.bundle import Policy, effective_keyring
    from appliance.device import Device
    from appliance.ota.channel import poll as do_poll
    from appliance.ota.fetch import Expected
    from appliance.ota.fetch import fetch as fetch_bundle
    from appliance.state import security_floor

    device = Device.from_env(data_dir)
    product = product or device.config.product
    target = target or device.config.target
    active = None
    if active_path is not None:
        digest = hashlib.sha256()
        with open(active_path, "rb") as f:
            remaining = active_size if active_size is not None else -1
            while remaining != 0 and (
                block := f.read(1 << 20 if remaining < 0 else min(1 << 20, remaining))
            ):
                digest.update(block)
                remaining -= len(block) if remaining > 0 else 0
        active = digest.hexdigest()
    choice = do_poll(repo_url, device.data_dir / "tuf", tuf_root, product, target, active)
    if choice is None:
        click.echo("up to date")
        return
    click.echo(f"{choice.kind} {choice.version} {choice.url}")
    if do_fetch:
        policy = Policy(
            keyring=effective_keyring(keyring_path, device.data_dir), product=product,
            target=target, min_security_version=security_floor(device.data_dir),
        )  # fmt: skip
        # The channel's signed length and sha256 are enforced while streaming: a mirror that
        # serves something else is refused before it costs memory, disk or the whole download.
        path = fetch_bundle(
            choice.url, device.data_dir / "updates", policy, rate=_rate(rate),
            expected=Expected(choice.length, choice.sha256),
        )  # fmt: skip
        click.echo(str(path))


def _agent_commands() -> None:
    from appliance.ota.agent_cli import run, status

    update.add_command(run)
    update.add_command(status)


_agent_commands()
