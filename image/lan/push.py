"""Push one bundle to several paired devices at once, a progress bar each."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from image.lan.client import DeviceClient
from image.lan.errors import LanError
from image.lan.store import PairedDevice


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What happened on one device."""

    device: PairedDevice
    ok: bool
    detail: str  # installed version + slot, or the reason it failed
    reply: dict[str, Any] | None = None


def client_for(device: PairedDevice, timeout: float = 60.0) -> DeviceClient:
    """A pinned client for a paired device."""
    return DeviceClient(device.address, device.port, device.fingerprint, device.token, timeout)


def push(
    bundle: Path,
    devices: Sequence[PairedDevice],
    *,
    show: bool = True,
    timeout: float = 60.0,
    tls_only: bool = False,
    reboot: bool = False,
) -> list[PushResult]:
    """Upload ``bundle`` to every device in parallel; one failure never stops the others.

    ``reboot``: ask each device that installed it to reboot into the new slot (on trial: its
    agent commits it after the health check, or the next boot returns to the old one)."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    size = bundle.stat().st_size
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        disable=not show,
        transient=False,
    )

    def one(device: PairedDevice) -> PushResult:
        label = escape(device.label)  # the device named itself: never console markup
        task = progress.add_task(label, total=size)
        client = client_for(device, timeout)
        try:
            reply = client.upload(
                bundle, lambda done: progress.update(task, completed=done), clear=not tls_only
            )
        except LanError as exc:
            progress.update(task, description=f"{label} [red]failed")
            return PushResult(device, False, str(exc))
        progress.update(task, description=f"{label} [green]installed")
        detail = f"installed {reply.get('installed')} into slot {reply.get('slot')}"
        if reboot:
            try:
                client.json("POST", "/v1/reboot")
            except LanError as exc:
                return PushResult(device, False, f"{detail}; reboot refused: {exc}", reply)
            detail += "; rebooting"
        return PushResult(device, True, detail, reply)

    with progress, concurrent.futures.ThreadPoolExecutor(max(1, len(devices))) as pool:
        return list(pool.map(one, devices))
