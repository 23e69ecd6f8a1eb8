"""The TUI's plain-Python parts: network validation/writing, status tails, camera helpers."""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.device import Device
from appliance.tui import camcheck, netconfig
from appliance.tui.devstatus import tail_records
from appliance.tui.logsource import filter_lines
from appliance.tui.netconfig import NetSetting


def static(address: str, gateway: str = "", dns: tuple[str, ...] = ()) -> NetSetting:
    return NetSetting("eth0", False, address, gateway, dns)


def test_valid_static_and_dhcp() -> None:
    assert netconfig.validate(static("192.168.1.20/24", "192.168.1.1", ("9.9.9.9",))) == {}
    assert netconfig.validate(NetSetting("eth0", True)) == {}
    assert netconfig.validate(static("10.1.2.3/8")) == {}  # no gateway: a local-only network


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        (NetSetting("", True), "iface"),
        (NetSetting("eth0; rm -rf /", True), "iface"),
        (static(""), "address"),
        (static("abc"), "address"),
        (static("192.168.1.20/33"), "address"),
        (static("192.168.1.20/31"), "address"),
        (static("127.0.0.1/8"), "address"),
        (static("224.0.0.1/24"), "address"),
        (static("192.168.1.255/24"), "address"),
        (static("192.168.1.20/24", "192.168.2.1"), "gateway"),
        (static("192.168.1.20/24", "192.168.1.255"), "gateway"),
        (static("192.168.1.20/24", "gw"), "gateway"),
        (static("192.168.1.20/24", "", ("1.1.1.1", "dns.example")), "dns"),
    ],
)
def test_bad_settings_name_their_field(setting: NetSetting, field: str) -> None:
    errors = netconfig.validate(setting)
    assert errors.get(field)


@settings(max_examples=300, deadline=None)
@given(
    address=st.one_of(
        st.text(max_size=24),
        st.builds(
            lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}",
            st.integers(0, 2**32 - 1),
            st.integers(0, 40),
        ),
    ),
    gateway=st.one_of(st.text(max_size=16), st.ip_addresses(v=4).map(str)),
    dns=st.lists(st.text(max_size=16), max_size=3),
)
def test_validate_never_raises_and_accepted_settings_are_coherent(
    address: str, gateway: str, dns: list[str]
) -> None:
    setting = static(address, gateway, tuple(dns))
    errors = netconfig.validate(setting)
    if not errors:
        iface = ipaddress.IPv4Interface(address.strip())
        if gateway.strip():
            assert ipaddress.IPv4Address(gateway.strip()) in iface.network
        assert all(ipaddress.IPv4Address(s) for s in dns)
        text = netconfig.render(setting)
        assert f"Address={address.strip()}\n" in text and "\n\n[Network]\n" in text


def test_write_is_atomic_and_refuses_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = netconfig.write_setting(tmp_path, NetSetting("eth0", True))
    assert netconfig.read_setting(tmp_path, "eth0") == NetSetting("eth0", True)
    with pytest.raises(ValueError, match="gateway"):
        netconfig.write_setting(tmp_path, static("10.0.0.2/24", "10.9.9.9"))
    before = path.read_bytes()

    def power_cut(src: object, dst: object) -> None:
        raise OSError("simulated failure before the rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        netconfig.write_setting(tmp_path, static("10.0.0.2/24", "10.0.0.1", ("10.0.0.1",)))
    assert path.read_bytes() == before  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_static_round_trip(tmp_path: Path) -> None:
    setting = static("172.16.5.9/20", "172.16.0.1", ("172.16.0.1", "9.9.9.9"))
    netconfig.write_setting(tmp_path, setting)
    assert netconfig.read_setting(tmp_path, "eth0") == setting


def test_apply_reports_missing_networkctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "networkctl not found" in netconfig.apply()
    assert "demo device" in netconfig.apply(demo=True)


def test_tail_skips_torn_and_cut_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\n' * 100 + b'{"a": 2}\n{"a": 3, "tor')
    assert tail_records(path)[-1] == {"a": 2}
    assert all(r in ({"a": 1}, {"a": 2}) for r in tail_records(path, max_bytes=50))
    assert tail_records(tmp_path / "missing") == []


def test_v4l2_listing_from_sysfs_and_dev(tmp_path: Path) -> None:
    (tmp_path / "sys/class/video4linux/video0").mkdir(parents=True)
    (tmp_path / "sys/class/video4linux/video0/name").write_text("vivid\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/video0").touch()
    (tmp_path / "dev/video2").touch()
    assert camcheck.list_v4l2(tmp_path) == [
        camcheck.V4l2Device("/dev/video0", "vivid"),
        camcheck.V4l2Device("/dev/video2", "(no sysfs name)"),
    ]
    assert camcheck.list_v4l2(Path("/nonexistent")) == []


def test_preview_shades_and_verdicts() -> None:
    gray = np.zeros((120, 160), np.uint8)
    gray[:, 80:] = 255
    lines = camcheck.preview(gray, cols=8, rows=2).splitlines()
    assert lines == ["    @@@@", "    @@@@"]
    dark = camcheck.CaptureReport("x", 1, 160, 120, 0.0, 10.0, 5.0, "")
    assert [v.split()[0] for v in dark.verdicts()] == ["too", "blurry"]


def test_grey_and_blur_match_opencv() -> None:
    """The numpy grey level and Laplacian variance give OpenCV's figures (the check needs none)."""
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(3).integers(0, 256, (120, 160, 3), np.uint8)
    for color, code in (("BGR", cv2.COLOR_BGR2GRAY), ("RGB", cv2.COLOR_RGB2GRAY)):
        ours, theirs = camcheck.to_gray(image, color), cv2.cvtColor(image, code)
        assert np.abs(ours.astype(np.int16) - theirs).max() <= 1
        blur = cv2.Laplacian(theirs, cv2.CV_64F).var()
        assert camcheck.laplacian_variance(theirs) == pytest.approx(blur, rel=1e-9)


def test_capture_check_without_opencv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime without OpenCV (the default image's) still checks a camera: grey, blur, FPS."""
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises
    flat = np.full((4, 48, 64, 3), 90, np.uint8)
    flat[:, :, 32:] = 200  # one sharp edge: blur well above zero
    np.savez(tmp_path / "cam.npz", images=flat, labels=np.zeros(4, np.int64))
    report = camcheck.capture_check(f"npz:{tmp_path / 'cam.npz'}", frames=4)
    assert (report.frames, report.width, report.height) == (4, 64, 48)
    assert report.brightness == pytest.approx(145.0, abs=0.5)
    assert report.blur > 100


def test_capture_of_a_missing_source_is_an_error() -> None:
    from appliance.errors import ApplianceError

    with pytest.raises(ApplianceError):
        camcheck.capture_check("/nonexistent/video.mp4")


def test_filter_needs_every_word() -> None:
    lines = ["INFO camera ok", "WARNING camera lost", "WARNING disk"]
    assert filter_lines(lines, "warning CAMERA") == ["WARNING camera lost"]
    assert filter_lines(lines, "") == lines


def test_device_action_log_appends(tmp_path: Path) -> None:
    from appliance.device import DeviceConfig

    device = Device(config=DeviceConfig(), data_dir=tmp_path)
    device.log_action("network.write", iface="eth0")
    device.log_action("slots.rollback")
    lines = device.actions_path.read_text().splitlines()
    assert len(lines) == 2 and '"iface": "eth0"' in lines[0]


def test_device_from_env_reads_device_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.device import DeviceConfigError

    conf = tmp_path / "device.json"
    conf.write_text('{"format": 1, "product": "p", "target": "t", "data_dir": "/d", "extra": 1}')
    monkeypatch.setenv("EDGEKILN_DEVICE_CONFIG", str(conf))
    monkeypatch.delenv("EDGEKILN_DATA", raising=False)
    device = Device.from_env()
    assert (device.config.product, device.config.target, device.data_dir) == ("p", "t", Path("/d"))
    conf.write_text('{"product": 5}')
    with pytest.raises(DeviceConfigError, match=r"device\.json"):
        Device.from_env()


def test_logging_goes_to_a_file_while_the_app_draws(tmp_path: Path) -> None:
    import logging

    from appliance.tui.cli import log_to_file

    root = logging.getLogger()
    before = root.handlers[:]
    with log_to_file(tmp_path / "log" / "tui.log"):
        logging.getLogger("appliance.device").warning("technician action: x")
    assert root.handlers == before
    assert "technician action: x" in (tmp_path / "log" / "tui.log").read_text()


def test_interfaces_of_this_host_with_ip_addresses() -> None:
    """The real sysfs and the real ``ip -j -4 addr``: names match, addresses parse as CIDR."""
    sysfs = Path("/sys/class/net")
    found = netconfig.list_interfaces(sysfs)
    assert [i.name for i in found] == sorted(p.name for p in sysfs.iterdir() if p.name != "lo")
    for iface in found:
        for address in iface.addresses:
            ipaddress.IPv4Interface(address)


LSBLK_WITH_STICK = b"""{"blockdevices": [
  {"name": "vda", "path": "/dev/vda", "rm": false, "hotplug": false, "tran": null,
   "fstype": null, "size": "256G", "mountpoint": null, "children": [
     {"name": "vda1", "path": "/dev/vda1", "rm": false, "hotplug": false, "tran": null,
      "fstype": "ext4", "size": "256G", "mountpoint": "/"}]},
  {"name": "sdb", "path": "/dev/sdb", "rm": true, "hotplug": true, "tran": "usb",
   "fstype": null, "size": "7.5G", "mountpoint": null, "children": [
     {"name": "sdb1", "path": "/dev/sdb1", "rm": true, "hotplug": true, "tran": null,
      "fstype": "vfat", "size": "7.5G", "mountpoint": null}]},
  {"name": "sdc", "path": "/dev/sdc", "rm": false, "hotplug": true, "tran": "usb",
   "fstype": "exfat", "size": "64G", "mountpoint": "/run/edgekiln/usb/sdc"}
]}"""


def test_lsblk_finds_removable_partitions_only() -> None:
    from appliance.tui.usb import UsbPartition, parse_lsblk

    assert parse_lsblk(LSBLK_WITH_STICK) == [
        UsbPartition("/dev/sdb1", "sdb1", "vfat", "7.5G", None),
        UsbPartition("/dev/sdc", "sdc", "exfat", "64G", "/run/edgekiln/usb/sdc"),
    ]


def test_lsblk_of_this_host_parses() -> None:
    """The real lsblk (no USB stick here): parses, lists no fixed disk."""
    from appliance.tui.usb import removable_partitions

    assert all(not p.path.startswith("/dev/vd") for p in removable_partitions())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.just(LSBLK_WITH_STICK[:120]))
def test_lsblk_garbage_is_a_named_error(data: bytes) -> None:
    from appliance.tui.usb import UsbError, parse_lsblk

    try:
        parse_lsblk(data)
    except UsbError as exc:
        assert "lsblk output not understood" in str(exc)
