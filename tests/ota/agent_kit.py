"""A file-backed device with a real update agent, and a real TUF channel made by kiln publish."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.ota.agent import Context, run
from appliance.ota.agent_config import UpdateConfig
from image.release.publish import publish
from tools.powercut import Device, _image

from .channelserver import Server, serve


@dataclass
class AgentDevice:
    """A powercut Device (slots, grubenv loader, keyring on files) plus the agent's context."""

    dev: Device
    channel: str
    tuf_root: Path
    device_id: str = "device-1"
    site: str | None = None
    booted: str = "A"
    version: str = "1.0.0"
    reboots: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    clock: float | None = None

    @property
    def data(self) -> Path:
        return self.dev.root / "data"

    def context(self) -> Context:
        config = UpdateConfig(channels=[self.channel], tuf_root=str(self.tuf_root),
                              **{"reboot": "now", **self.config})  # fmt: skip
        return Context(
            config=config, data_dir=self.data, tuf_root=self.tuf_root, product="powercut",
            target="generic-x86-64", version=self.version, device_id=self.device_id,
            site=self.site, policy=self.dev.policy, loader=self.dev.loader(),
            booted=self.booted,  # type: ignore[arg-type]
            slots=self.dev.slots, reboot=lambda: self.reboots.append("reboot") or "rebooting",
            now=(lambda: self.clock) if self.clock is not None else __import__("time").time,
            rng=random.Random(1), timeout_s=1.0,
        )  # fmt: skip

    def run(self, force: bool = False) -> str:
        return run(self.context(), force=force)

    def events(self) -> list[dict[str, Any]]:
        path = self.data / "edgekiln" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def boot(self) -> tuple[str, str | None]:
        """What the loader boots next (the try is counted down), as the device would."""
        slot, version = self.dev.boot()
        self.booted, self.version = slot, version or "?"
        return slot, version

    def commit(self) -> None:
        """The health gate passed on the booted slot."""
        self.dev.loader().commit(self.booted)  # type: ignore[arg-type]

    def downloads(self) -> int:
        updates = self.data / "updates"
        return sum(p.stat().st_size for p in updates.iterdir()) if updates.exists() else 0


def release(dev: Device, tmp: Path, seed: int, version: str, key: Any = None) -> Path:
    """A signed full bundle of image ``seed`` (by the device's release key unless ``key``)."""
    if key is not None:
        old, dev.key = dev.key, key
    data = dev._bundle(_image(seed), version)
    if key is not None:
        dev.key = old
    path = tmp / f"v{version}-{seed}.bundle"
    path.write_bytes(data)
    return path


@pytest.fixture
def keys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "offline" / "tuf-keys"
    monkeypatch.setenv("EDGEKILN_TUF_KEYS", str(home))
    return home


@pytest.fixture
def www(tmp_path: Path, keys_home: Path) -> Iterator[Server]:
    (tmp_path / "www" / "repo").mkdir(parents=True)
    with serve(tmp_path / "www") as server:
        yield server


def make_device(tmp: Path, server: Server, name: str = "dev", **kw: Any) -> AgentDevice:
    dev = Device(tmp / name)
    dev.reset()
    repo = tmp / "www" / "repo"
    if not (repo / "metadata" / "1.root.json").exists():
        publish(release(dev, tmp, 1, "1.0.0"), repo, create_keys=True)
    return AgentDevice(dev, f"{server.url}/repo", repo / "metadata" / "1.root.json", **kw)


def publish_to(server: Server, bundle: Path) -> None:
    publish(bundle, server.root / "repo", create_keys=True)
