"""``appliance bundle info|verify``: inspect and fully verify a bundle offline.

Exit codes: 0 ok, 2 usage, 3 signature or key, 4 policy (product, target, security_version,
expiry), 5 corrupt or malformed bundle (see FORMAT.md).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import click

from appliance import cli_options
from appliance.bundle.keychain import effective_keyring
from appliance.bundle.manifest import describe
from appliance.bundle.reader import Policy, Progress, open_bundle, peek_manifest

EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 2 usage, 3 signature or key, 4 policy (product, target, "
    "security_version, expiry), 5 corrupt or malformed bundle."
)


def _open(path: str, stack: ExitStack) -> tuple[BinaryIO, str]:
    if path == "-":
        return sys.stdin.buffer, "stdin"
    return stack.enter_context(open(path, "rb")), path


@click.group(epilog=EXIT_CODES_HELP)
def bundle() -> None:
    """Inspect and verify update bundles (works with no network)."""


@bundle.command(epilog=EXIT_CODES_HELP)
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def info(path: str, as_json: bool) -> None:
    """Show a bundle's manifest (PATH or - for stdin). The signature is NOT checked: use verify."""
    with ExitStack() as stack:
        stream, source = _open(path, stack)
        manifest = peek_manifest(stream, source=source)
    data = describe(manifest)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(f"bundle {source} (format {manifest.format}, signature not checked)")
    click.echo(f"  product           {manifest.product}")
    click.echo(f"  targets           {', '.join(manifest.targets)}")
    click.echo(f"  version           {manifest.version}")
    click.echo(f"  security_version  {manifest.security_version}")
    click.echo(f"  created           {_when(manifest.created)}")
    click.echo(f"  expires           {_when(manifest.expires) if manifest.expires else 'never'}")
    click.echo(f"  key id            {manifest.key_id}")
    for p in manifest.payloads:
        click.echo(
            f"  payload {p.name}: {p.kind}, {p.compression}, {p.size} bytes on the wire, "
            f"image {p.image.size} bytes sha256 {p.image.sha256}"
        )


def _when(ts: int | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@bundle.command(epilog=EXIT_CODES_HELP)
@click.argument("path")
@cli_options.keyring_option("The device keyring baked into the image.")
@cli_options.data_dir_option(
    "Data partition mount: use its rotated keyring and its anti-rollback floor.", envvar=None
)
@click.option("--product", help="This device's product (unchecked if omitted).")
@click.option("--target", help="This device's hardware target (unchecked if omitted).")
@click.option(
    "--min-security-version", type=click.IntRange(min=0), help="Override the anti-rollback floor."
)
@click.option(
    "--trusted-time",
    help="Enforce expiry: a Unix time, or 'now' if this machine's clock is trusted.",
)
def verify(
    path: str,
    keyring_path: Path,
    data_dir: Path | None,
    product: str | None,
    target: str | None,
    min_security_version: int | None,
    trusted_time: str | None,
) -> None:
    """Authenticate a bundle and verify every payload chunk (PATH or - for stdin); write nothing."""
    from appliance.state import security_floor

    keyring = effective_keyring(keyring_path, data_dir)
    floor = min_security_version
    if floor is None:
        floor = security_floor(data_dir) if data_dir is not None else 0
    now: int | None = None
    if trusted_time == "now":
        now = int(time.time())
    elif trusted_time is not None:
        try:
            now = int(trusted_time)
        except ValueError:
            raise click.BadParameter("a Unix time or 'now'", param_hint="--trusted-time") from None
    policy = Policy(keyring, product, target, floor, now)
    with ExitStack() as stack:
        stream, source = _open(path, stack)
        verified = open_bundle(stream, policy, source)
        m = verified.manifest
        total = sum(p.image.size for p in m.payloads)
        verified.verify_all(progress=_progress_bar(stack, total))
    unchecked = [name for name, v in (("product", product), ("target", target)) if v is None]
    click.echo(
        f"OK {source}: {m.product} {m.version} (security_version {m.security_version}, "
        f"floor {floor}) signed by {m.key_id}; {len(m.payloads)} payload(s), {total} bytes verified"
    )
    if unchecked:
        click.echo(
            f"note: {' and '.join(unchecked)} not checked (pass --product/--target)", err=True
        )
    if now is None and m.expires is not None:
        click.echo("note: expiry not checked (clock not trusted; pass --trusted-time)", err=True)


def _progress_bar(stack: ExitStack, total: int) -> Progress | None:
    """A rich progress callback on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress as Bar

    bar = stack.enter_context(Bar(transient=True))
    task = bar.add_task("verifying", total=total)
    base = [0, 0]  # bytes of payloads already finished, last done value

    def update(done: int, of: int) -> None:
        if done < base[1]:  # a new payload started
            base[0] += base[1]
        base[1] = done
        bar.update(task, completed=base[0] + done)

    return update
