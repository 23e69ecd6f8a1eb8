"""``kiln push`` to 5 devices at once across the veth; one drops off mid-upload."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.slots.filestore import file_loader
from appliance.slots.state import BootState
from image.cli import cli as kiln
from image.lan.errors import LanError
from image.lan.push import push
from image.lan.store import PairedStore
from tools.lan_rig import LanDevice, Release, Veth, image, wait_for

IMAGE = 24 * 1024 * 1024  # big enough that the drop lands mid-upload


@pytest.fixture
def five(tmp_path: Path, veth: Veth, release: Release, xdg: Path) -> Iterator[list[LanDevice]]:
    base = 19443 + os.getpid() % 1000 * 20
    devices = [LanDevice(tmp_path / f"d{i}", i, release, IMAGE) for i in range(5)]
    try:
        for i, dev in enumerate(devices):
            dev.start(veth, base + i)
            where = f"{veth.dev_addr}:{dev.port}"
            result = CliRunner().invoke(
                kiln, ["pair", where, "--code", dev.pair_code(), "--fingerprint", dev.fingerprint()]
            )
            assert result.exit_code == 0, result.output
        yield devices
    finally:
        for dev in devices:
            dev.stop()


@pytest.mark.slow
def test_push_to_five_one_drops_off(five: list[LanDevice], release: Release) -> None:
    v2 = image(2, IMAGE)
    bundle = release.bundle("v2-big.ekb", v2)
    victim = five[2]

    def drop() -> None:
        # the loader file appears when the installer marks slot B bad: the manifest was
        # verified and the payload is streaming in
        if wait_for(victim.loader_file.exists, 60, 0.002):
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=drop)
    killer.start()
    results = push(bundle, PairedStore().select((), "plant-1", False), show=False)
    killer.join()
    by_id = {r.device.id: r for r in results}
    assert sorted(by_id) == [d.id for d in five]
    failed = [r for r in results if not r.ok]
    assert [r.device.id for r in failed] == [victim.id], [r.detail for r in results]
    print("victim:", failed[0].detail)
    assert "connection" in failed[0].detail, failed[0].detail
    for dev in five:
        if dev is victim:
            assert file_loader(dev.loader_file).read().trying is None  # never tried
            continue
        assert by_id[dev.id].detail == "installed 2.0.0 into slot B"
        assert dev.slots["B"].read_bytes() == v2
        assert file_loader(dev.loader_file).read() == BootState("A", "B", 1)


def test_push_cli_summary_names_failures(five: list[LanDevice], release: Release) -> None:
    stranger = Release(five[0].root.parent / "stranger").bundle("x.ekb", image(3, IMAGE // 8))
    result = CliRunner().invoke(kiln, ["push", str(stranger), "dev00", "dev01"])
    assert result.exit_code != 0
    assert "0/2 installed" in result.output and "HTTP 422" in result.output
    assert isinstance(result.exception, LanError)
