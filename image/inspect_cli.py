"""``kiln inspect IMAGE``: partition table, versions, slot contents, signature check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from image.errors import BuildError


class VerificationFailed(BuildError):
    """The manifest signature or a partition digest does not match."""


@click.command("inspect")
@click.argument("image", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--keyring",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Keyring to check the manifest against (default: the one inside slot A).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-digests", is_flag=True, help="Skip the manifest check (no partition hashing).")
def inspect(image: Path, keyring: Path | None, as_json: bool, no_digests: bool) -> None:
    """Show what a built disk IMAGE holds, and verify its signed manifest."""
    from image.inspect import inspect_image

    info = inspect_image(image, keyring, digests=not no_digests)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        click.echo(_text(info))
    ver = info.get("verification", {})
    bad = ver.get("signature") == "INVALID" or "MISMATCH" in ver.get("partitions", {}).values()
    if bad:
        raise VerificationFailed(f"{image}: manifest verification failed (see above)")


def _text(info: dict[str, Any]) -> str:
    mib = 1024 * 1024
    lines = [f"image {info['image']} ({info['size'] / mib:.0f} MiB)", "", "partitions:"]
    for p in info["partitions"]:
        lines.append(
            f"  {p['number']}  {p['name']:<9} start {p['start'] / mib:>6.0f} MiB  "
            f"size {p['size'] / mib:>6.0f} MiB  {p['uuid']}"
        )
    if info.get("layout") == "l4t":
        where = ", ".join(f"{k} -> {v}" for k, v in sorted(info.get("l4t_partitions", {}).items()))
        lines += ["", f"L4T layout (NVIDIA's flash tools, ROOTFS_AB=1): {where}"]
    boot = info.get("boot", {})
    if boot.get("loader") == "u-boot":
        lines += ["", f"boot: U-Boot boot.scr {'present' if boot.get('boot.scr') else 'MISSING'}"]
        for name, copy in boot["env_copies"].items():
            lines.append(
                f"  {name}: " + (f"flag {copy['flag']} {copy['variables']}" if copy else "INVALID")
            )
        lines.append(f"  in use: {boot.get('env')}")
    elif boot:
        lines += ["", f"boot: EFI binary {'present' if boot.get('efi') else 'MISSING'}"]
        for name in ("grubenv", "grubenv.bak"):
            lines.append(f"  {name}: {boot.get(name)}")
    for name, slot in sorted(info.get("slots", {}).items()):
        if slot["state"] == "empty":
            lines.append(f"{name}: empty")
            continue
        dev = slot["device"]
        models = ", ".join(f"{r}={m['name']} {m['version']}" for r, m in slot["models"].items())
        lines.append(
            f"{name}: {dev['product']} {dev['version']} ({dev['target']}, {dev['backend']}), "
            f"security_version {dev['security_version']}, kernel {slot['kernel']}, "
            f"runtime {slot['runtime']}, models {models}"
        )
        rt = dev.get("runtime")  # absent in images built before device.json recorded it
        if isinstance(rt, dict):
            lines.append(
                f"  runtime: back ends {', '.join(rt.get('backends', [])) or '?'}; "
                f"extras {', '.join(rt.get('extras', [])) or 'none'}"
            )
        u = slot.get("update")
        lines.append(
            f"  updates: {', '.join(u['channels'])}, every {u['poll_interval_s']} s, window "
            f"{u['window'] or 'any time'}, cap {u['rate'] or 'none'} B/s, reboot {u['reboot']}"
            if u
            else "  updates: off (no [update] in the recipe)"
        )
    ver = info.get("verification")
    if ver:
        lines += ["", f"manifest: {ver.get('manifest')}", f"  signature: {ver.get('signature')}"]
        for name, state in ver.get("partitions", {}).items():
            lines.append(f"  {name}: digest {state}")
    return "\n".join(lines)
