"""mDNS across the veth: 20 device processes advertise, the laptop browses; TXT contents;
the record is withdrawn on shutdown."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from image.cli import cli as kiln
from image.lan.browse import browse
from tools.lan_rig import LanDevice, Release, Veth

COUNT = 20


@pytest.fixture
def twenty(tmp_path: Path, veth: Veth, release: Release) -> Iterator[list[LanDevice]]:
    base = 20443 + os.getpid() % 1000 * 30
    devices = [LanDevice(tmp_path / f"d{i}", i, release) for i in range(COUNT)]
    try:
        for i, dev in enumerate(devices):
            dev.start(veth, base + i, mdns=True, wait=False)
        for dev in devices:
            dev.wait_ready()
        yield devices
    finally:
        for dev in devices:
            dev.stop()


@pytest.mark.slow
def test_twenty_devices_discovered_then_one_withdraws(twenty: list[LanDevice], veth: Veth) -> None:
    time.sleep(2)  # let the devices finish probing and announcing
    start = time.monotonic()
    seen = browse(30, [veth.host_addr], expect=COUNT)
    elapsed = time.monotonic() - start
    print(f"discovery of {COUNT} devices: {elapsed:.2f} s")
    assert sorted(s.id for s in seen) == sorted(d.id for d in twenty)
    first = next(s for s in seen if s.id == "dev00")
    assert first.address == veth.dev_addr and first.port == twenty[0].port
    assert first.txt["fp"] == twenty[0].fingerprint()
    assert first.txt["site"] == "plant-1" and first.txt["target"] == "generic-x86-64"
    assert first.txt["slot"] == "A" and first.txt["port"] == str(twenty[0].port)
    assert {"name", "version", "mode"} <= set(first.txt)

    twenty[0].stop()  # SIGTERM: goodbye packets withdraw the record
    again = browse(4, [veth.host_addr])
    assert "dev00" not in {s.id for s in again} and len(again) == COUNT - 1

    # a state change (here: the site set on data) is re-announced within the refresh period
    (twenty[1].data / "edgekiln" / "site").write_text("plant-2\n")
    time.sleep(6)
    moved = {s.id: s for s in browse(4, [veth.host_addr], expect=COUNT - 1)}
    assert moved["dev01"].txt["site"] == "plant-2"

    result = CliRunner().invoke(
        kiln, ["discover", "--seconds", "3", "--mdns-interface", veth.host_addr, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == COUNT - 1


def test_address_change_stops_the_api_for_a_restart(
    tmp_path: Path, veth: Veth, release: Release
) -> None:
    dev = LanDevice(tmp_path / "d", 42, release)
    new = veth.dev_addr.rsplit(".", 1)[0] + ".77"
    try:
        dev.start(veth, 21999, "--interface", veth.dev_if, mdns=True)
        seen = browse(5, [veth.host_addr], expect=1)
        assert [s.address for s in seen if s.id == "dev42"] == [veth.dev_addr]
        # the new address is a secondary one until the old is removed: promote it then
        sysctl = f"net.ipv4.conf.{veth.dev_if}.promote_secondaries=1"
        subprocess.run(["ip", "netns", "exec", veth.ns, "sysctl", "-qw", sysctl], check=True)
        subprocess.run(
            ["ip", "-n", veth.ns, "addr", "add", f"{new}/24", "dev", veth.dev_if], check=True
        )
        subprocess.run(
            ["ip", "-n", veth.ns, "addr", "del", f"{veth.dev_addr}/24", "dev", veth.dev_if],
            check=True,
        )
        assert dev.proc is not None
        assert dev.proc.wait(30) != 0
        log = (dev.root / "serve.log").read_text()
        assert f"changed from {veth.dev_addr} to {new}" in log
        # started again (as systemd would), it listens and is advertised on the new address
        dev.start(veth, 21999, "--interface", veth.dev_if, mdns=True)
        assert f"https://{new}:21999" in (dev.root / "serve.log").read_text()
        seen = browse(5, [veth.host_addr], expect=1)
        assert [s.address for s in seen if s.id == "dev42"] == [new]
    finally:
        dev.stop()
        subprocess.run(
            ["ip", "-n", veth.ns, "addr", "add", f"{veth.dev_addr}/24", "dev", veth.dev_if],
            check=False,
        )
        subprocess.run(
            ["ip", "-n", veth.ns, "addr", "del", f"{new}/24", "dev", veth.dev_if], check=False
        )
        subprocess.run(
            ["ip", "-n", veth.ns, "route", "replace", "224.0.0.0/4", "dev", veth.dev_if],
            check=False,
        )


def test_pair_by_name_takes_address_and_fingerprint_from_mdns(
    tmp_path: Path, veth: Veth, release: Release, xdg: Path
) -> None:
    from image.lan.store import PairedStore

    dev = LanDevice(tmp_path / "d", 43, release)
    (dev.data / "edgekiln" / "name").write_text("[/bold] line [link=x]\n")  # not markup
    try:
        dev.start(veth, 21998, mdns=True)
        table = ["discover", "--seconds", "3", "--mdns-interface", veth.host_addr]
        result = CliRunner().invoke(kiln, table, env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert "[/bold] line [link=x]" in result.output
        args = ["pair", "dev43", "--code", dev.pair_code(), "--mdns-interface", veth.host_addr]
        result = CliRunner().invoke(kiln, args)
        assert result.exit_code == 0, result.output
        paired = PairedStore().find("dev43")
        assert (paired.address, paired.port) == (veth.dev_addr, 21998)
        assert paired.fingerprint == dev.fingerprint()
        missing = ["pair", "dev99", "--code", "1", "--seconds", "2"]
        result = CliRunner().invoke(kiln, [*missing, "--mdns-interface", veth.host_addr])
        assert result.exit_code != 0 and "not seen on the LAN" in str(result.exception)
    finally:
        dev.stop()
