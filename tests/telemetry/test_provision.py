"""Provisioning: checked sources, ``kiln flash --provision`` onto real data, pickup at boot.

The end-to-end case flashes a real GPT disk whose data partition is a real ext4, reads the
provisioned files back out of it with debugfs, and lets a telemetry sink configured from them
publish over mutual TLS to a real mosquitto that requires the client certificate.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.telemetry import provision, settings
from appliance.telemetry.identity import resolve
from appliance.telemetry.provision import ProvisionError, apply_pending, plan
from appliance.telemetry.setup import telemetry_sink
from image.build.disk import MIB, assemble_disk, read_table, standard_layout
from image.build.fs import make_ext4
from tests.inference.mqtt_broker import (
    Broker,
    Subscriber,
    make_ca,
    make_client_cert,
    make_server_cert,
)
from tests.telemetry.helpers import wait_for

pytestmark = pytest.mark.integration
KILN = Path(sys.executable).parent / "kiln"


def make_source(root: Path, name: str = "cam-7", **overrides: Any) -> dict[str, Any]:
    """A provisioning folder: CA, server and client certificates, provision.toml."""
    root.mkdir(parents=True, exist_ok=True)
    ca_path, ca_cert, ca_key = make_ca(root, "site-ca")
    server = make_server_cert(root, ca_cert, ca_key)
    cert, key = make_client_cert(root, ca_cert, ca_key, name)
    write_toml(root, name, **overrides)
    return {"dir": root, "ca": ca_path, "ca_cert": ca_cert, "ca_key": ca_key, "server": server,
            "cert": cert, "key": key}  # fmt: skip


def write_toml(root: Path, name: str = "cam-7", **overrides: Any) -> None:
    """provision.toml over the PEM files ``make_source`` made (None drops a field)."""
    fields = {"device_id": name, "site": "plant-a", "broker": "mqtts://localhost:8883",
              "ca": "site-ca.pem", "cert": f"{name}.pem", "key": f"{name}.key",
              **overrides}  # fmt: skip
    body = "".join(f'{k} = "{v}"\n' for k, v in fields.items() if v is not None)
    (root / "provision.toml").write_text(body)


def test_plan_lists_identity_pki_and_device_layer(tmp_path: Path) -> None:
    src = make_source(tmp_path / "prov")
    prov = plan(src["dir"])
    files = {f.rel: f for f in prov.files}
    assert files["edgekiln/device-id"].data == b"cam-7\n"
    assert files["edgekiln/site"].data == b"plant-a\n"
    assert files["edgekiln/pki/client.key"].data == src["key"].read_bytes()
    for name in ("ca.pem", "client.pem", "client.key"):
        assert files[f"edgekiln/pki/{name}"].mode == 0o600
    layer = json.loads(files[settings.DEVICE_FILE].data)
    assert layer["mqtt"] == {"host": "localhost", "port": 8883, "ca_file": "edgekiln/pki/ca.pem",
                             "cert_file": "edgekiln/pki/client.pem",
                             "key_file": "edgekiln/pki/client.key"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"device_id": "cam/7"}, "device_id: 'cam/7'"),
        ({"site": "plant a"}, "site: 'plant a'"),
        ({"broker": "http://x"}, "broker: 'http://x' is not mqtt://"),
        ({"ca": None, "cert": None, "key": None}, "ca: an mqtts:// broker needs"),
        ({"key": None}, "cert and key go together"),
        ({"ca": "missing.pem"}, r"ca: .*missing.pem: cannot read"),
        ({"cert": "site-ca.key"}, "cert: .* is not a PEM certificate"),
        ({"colour": "red"}, "unknown fields \\['colour'\\]"),
    ],
)
def test_bad_sources_are_refused_naming_file_and_field(
    tmp_path: Path, change: dict[str, Any], needle: str
) -> None:
    src = make_source(tmp_path / "prov", **change)
    (src["dir"] / "site-ca.key").write_text("not a certificate\n")
    with pytest.raises(ProvisionError, match=needle) as info:
        plan(src["dir"])
    assert str(src["dir"] / "provision.toml") in str(info.value)


def test_certificate_checks_key_issuer_expiry_and_encryption(tmp_path: Path) -> None:
    import datetime

    from cryptography.hazmat.primitives import serialization

    src = make_source(tmp_path / "prov")
    d = src["dir"]
    _, rogue_cert, rogue_key = make_ca(d, "rogue-ca")
    foreign = make_client_cert(d, rogue_cert, rogue_key, "cam-foreign")
    other = make_client_cert(d, src["ca_cert"], src["ca_key"], "cam-other")
    expired = make_client_cert(d, src["ca_cert"], src["ca_key"], "cam-old", expired=True)
    cases = [
        ({"key": other[1].name}, "key: .*cam-other.key does not belong to the certificate"),
        ({"cert": foreign[0].name, "key": foreign[1].name}, "was not issued by the CA"),
        ({"cert": expired[0].name, "key": expired[1].name}, "cert: .*cam-old.pem expired on"),
    ]
    now = datetime.datetime.now(datetime.UTC)
    for change, needle in cases:
        write_toml(d, **change)
        with pytest.raises(ProvisionError, match=needle):
            plan(d, now=now)
    key = serialization.load_pem_private_key(src["key"].read_bytes(), None)
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (d / "locked.key").write_bytes(locked)
    write_toml(d, key="locked.key")
    with pytest.raises(ProvisionError, match=r"key: .*locked\.key is encrypted"):
        plan(d)


def _disk(tmp_path: Path) -> Path:
    """A real GPT disk image whose data partition is an ext4 holding the image's pipeline.json."""
    tree = tmp_path / "data-tree"
    (tree / "edgekiln").mkdir(parents=True)
    (tree / "edgekiln" / "pipeline.json").write_text('{"model": "/m", "source": "x"}\n')
    data = make_ext4(tree, tmp_path / "data.ext4", 8, __import__("uuid").uuid4(), 0, journal=True)
    out = tmp_path / "disk.img"
    assemble_disk(out, standard_layout("amd64", 2, 2, 10, {"data": data}), "provision-test")
    return out


def _extract_data(disk: Path, out: Path) -> Path:
    """The data partition's ``/edgekiln`` under ``out`` (debugfs rdump keeps the modes)."""
    part = next(p for p in read_table(disk) if p.name == "data")
    image = out.parent / f"{out.name}.ext4"
    with disk.open("rb") as src, image.open("wb") as dst:
        src.seek(part.start)
        dst.write(src.read(part.size))
    fsck = subprocess.run(
        ["e2fsck", "-fn", str(image)], capture_output=True, text=True, check=False
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # debugfs left a consistent fs
    out.mkdir(parents=True)
    subprocess.run(["debugfs", "-R", f"rdump /edgekiln {out}", str(image)], check=True,
                   capture_output=True)  # fmt: skip
    return out


def test_kiln_flash_provision_writes_identity_onto_data_and_the_device_publishes_over_mtls(
    tmp_path: Path,
) -> None:
    src = make_source(tmp_path / "prov")
    disk = _disk(tmp_path)
    target = tmp_path / "target.img"
    done = subprocess.run(
        [str(KILN), "flash", str(disk), str(target), "--no-bmap", "--provision", str(src["dir"])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "provisioned cam-7 (site plant-a, broker mqtts://localhost:8883)" in done.stdout
    data = tmp_path / "device-data"
    _extract_data(target, data)
    state = data / "edgekiln"
    assert (state / "pipeline.json").is_file()  # the image's own file is still there
    assert (state / "device-id").read_text() == "cam-7\n"
    assert (state / "site").read_text() == "plant-a\n"
    for name in ("ca.pem", "client.pem", "client.key"):
        assert stat.S_IMODE((state / "pki" / name).stat().st_mode) == 0o600
    assert (state / "pki" / "client.key").read_bytes() == src["key"].read_bytes()

    # The device: recipe layer on the slot (a broker the site overrides), provisioning on data.
    acl = "topic read edgekiln/#\n\nuser cam-7\ntopic write edgekiln/plant-a/cam-7/#\n"
    broker = Broker(tmp_path / "broker", tls=(src["ca"], *src["server"]), client_certs=True,
                    acl=acl)  # fmt: skip
    broker.start()
    slot = tmp_path / "slot-telemetry.json"
    slot.write_text(json.dumps({"format": 1, "mqtt": {"host": "fleet.example", "port": 8883,
                    "topic": "edgekiln", "buffer_dir": "edgekiln/mqtt-buffer",
                    "ca_file": "/data/edgekiln/pki/site-ca.pem", "reconnect_max_s": 1},
                    "telemetry": {"window_s": 1.0}}))  # fmt: skip
    settings.update_device_layer(data, mqtt={"port": broker.tls_port})  # the test's free port
    mqtt, tele = settings.effective(None, None, slot=slot, data=data)
    assert mqtt is not None and tele is not None
    assert mqtt.host == "localhost" and mqtt.cert_file == str(state / "pki" / "client.pem")
    ident = resolve(tele)
    assert (ident.device, ident.site) == ("cam-7", "plant-a")
    sub = Subscriber(broker.port, "edgekiln/plant-a/cam-7")
    sink = telemetry_sink(tele, mqtt, str(tmp_path / "no-model"), None)  # the agent's path
    try:
        sink.publish({"type": "event", "kind": "fallback", "reason": "test"})
        wait_for(
            lambda: any(m.get("kind") == "fallback" for _, m in sub.messages),
            what="the provisioned device's alert over mutual TLS",
        )
        topic, msg = next((t, m) for t, m in sub.messages if m.get("kind") == "fallback")
        assert topic == "edgekiln/plant-a/cam-7/events" and msg["device"] == "cam-7"
        assert msg["site"] == "plant-a" and msg["alert"] is True
    finally:
        sink.close()
        sub.close()
        broker.stop()


def test_flash_refuses_a_bad_provisioning_source_before_writing(tmp_path: Path) -> None:
    src = make_source(tmp_path / "prov", device_id="bad id")
    target = tmp_path / "target.img"
    done = subprocess.run(
        [str(KILN), "flash", str(_disk(tmp_path)), str(target), "--provision", str(src["dir"])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "device_id: 'bad id'" in done.stderr
    assert "provision.toml" in done.stderr and not target.exists()


def test_a_provisioning_folder_dropped_on_data_is_applied_at_boot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    drop = data / provision.DROP_DIR
    make_source(drop, name="cam-9", site="plant-z", broker="mqtts://broker.lan")
    bad = tmp_path / "bad"
    make_source(bad, broker="mqtt://x:99999")
    prov = apply_pending(data)
    assert prov is not None and prov.device_id == "cam-9"
    state = data / "edgekiln"
    assert (state / "device-id").read_text() == "cam-9\n" and not drop.exists()
    assert stat.S_IMODE(os.stat(state / "pki" / "client.key").st_mode) == 0o600
    assert apply_pending(data) is None  # applied once
    mqtt, tele = settings.effective(None, None, slot=tmp_path / "no-slot-file", data=data)
    assert mqtt is not None and (mqtt.host, mqtt.port) == ("broker.lan", 8883)
    assert tele is not None and resolve(tele).site == "plant-z"
    # A bad folder stays where it is (the technician sees why) and changes nothing.
    bad.rename(drop)
    with pytest.raises(ProvisionError, match="broker"):
        apply_pending(data)
    assert drop.exists() and (state / "device-id").read_text() == "cam-9\n"


def test_disk_without_data_partition_is_refused(tmp_path: Path) -> None:
    from image.flash import FlashError
    from image.flash_provision import check_source, write_provision

    disk = tmp_path / "disk.img"
    assemble_disk(disk, standard_layout("amd64", 2, 2, 2, {})[:2], "no-data")
    src = make_source(tmp_path / "prov")
    with pytest.raises(FlashError, match="no partition named 'data'"):
        write_provision(disk, check_source(src["dir"]))
    assert disk.stat().st_size == 6 * MIB


def test_provision_after_a_bmap_flash_of_a_compressed_image(tmp_path: Path) -> None:
    from image.build.disk import compress, write_bmap

    src = make_source(tmp_path / "prov", name="cam-8")
    disk = _disk(tmp_path)
    bmap = write_bmap(disk, tmp_path / "disk.bmap")
    zst = compress(disk, tmp_path / "disk.img.zst")
    target = tmp_path / "target.img"
    target.write_bytes(b"\xff" * (16 * MIB))  # stale bytes where the data partition goes
    done = subprocess.run(
        [str(KILN), "flash", str(zst), str(target), "--bmap", str(bmap),
         "--provision", str(src["dir"] / "provision.toml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = tmp_path / "device-data"
    _extract_data(target, data)
    assert (data / "edgekiln" / "device-id").read_text() == "cam-8\n"
    assert (data / "edgekiln" / "pki" / "client.pem").read_bytes() == src["cert"].read_bytes()
