"""Where telemetry settings live: the slot's recipe layer travels with over-the-air updates.

The end-to-end case builds two real slot images (ext4, the builder's own overlay code) from two
recipes whose ``[telemetry]`` differ, installs the second as a signed bundle with the real
installer into slot files, reads ``/etc/edgekiln/telemetry.json`` back out of the installed
slot, and combines it with the device's layer on data: the update's recipe settings and the
device's own broker host and identity both hold, and a stale flash-time block in pipeline.json
is not read.
"""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from appliance.bundle import PayloadSource, write_bundle
from appliance.inference.pipeline import load_config
from appliance.ota.installer import install
from appliance.telemetry import settings
from appliance.telemetry.errors import TelemetryError
from appliance.telemetry.identity import resolve
from image.build import rootfs
from image.build.device_files import device_config, pipeline_config, telemetry_config
from image.build.fs import make_ext4
from image.recipe import load_recipe
from tools.powercut import CHUNK, PRODUCT, TARGET, Device

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _recipe(tmp_path: Path, version: str, telemetry: str) -> Path:
    path = tmp_path / f"recipe-{version}.toml"
    path.write_text(
        f'extends = "{REPO / "recipes" / "generic-x86-64.toml"}"\n'
        f'version = "{version}"\n\n[telemetry]\n{telemetry}'
    )
    return path


def _slot_image(tmp_path: Path, recipe: Path) -> bytes:
    """A real slot image (ext4) with the overlay the builder renders from ``recipe``."""
    loaded = load_recipe(recipe)
    base = tmp_path / f"base-{recipe.stem}"
    for d in ("boot", "etc/systemd/system", "etc/systemd/network", "usr/lib/systemd/system"):
        (base / d).mkdir(parents=True)
    (base / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel")
    (base / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    cfg = rootfs.OverlayConfig(
        watchdog_sec=30, runtime_watchdog_sec=15, slots_spec="grub:/boot/efi",
        device_json=device_config(loaded), keyring=None,
        telemetry_json=telemetry_config(loaded),
    )  # fmt: skip
    tree = rootfs.assemble_root(base, tmp_path / f"root-{recipe.stem}", runtime=None, models={},
                                config=cfg)  # fmt: skip
    out = make_ext4(tree, tmp_path / f"{recipe.stem}.ext4", 4, uuid.uuid4(), 0)
    return out.read_bytes()


def _slot_file(slot_image: Path, tmp_path: Path) -> Path:
    out = tmp_path / "installed-telemetry.json"
    done = subprocess.run(
        ["debugfs", "-R", "cat /etc/edgekiln/telemetry.json", str(slot_image)],
        capture_output=True, check=True,
    )  # fmt: skip
    out.write_bytes(done.stdout)
    return out


def test_an_ota_update_brings_its_recipe_telemetry_and_keeps_the_device_layer(
    tmp_path: Path,
) -> None:
    v1 = _recipe(tmp_path, "1.0.0", 'broker = "mqtt://fleet-old.lan"\nwindow_s = 60\n')
    v2 = _recipe(
        tmp_path, "2.0.0", 'broker = "mqtt://fleet.lan:1884"\nwindow_s = 30\ndrift_psi = 0.3\n'
    )
    dev = Device(tmp_path / "device")
    dev.reset()
    data = dev.root / "data"
    # Flashed with v1: the image's pipeline.json, plus an older builder's stale copy of its
    # telemetry blocks (what devices flashed before the slot layer carry on data).
    stale = json.loads(pipeline_config(load_recipe(v1)))
    stale["mqtt"] = {"host": "fleet-old.lan", "port": 1883, "topic": "edgekiln"}
    stale["telemetry"] = {"window_s": 60.0}
    (data / "edgekiln").mkdir(parents=True)
    (data / "edgekiln" / "pipeline.json").write_text(json.dumps(stale))
    (data / "edgekiln" / "device-id").write_text("cam-7\n")
    (data / "edgekiln" / "site").write_text("plant-a\n")
    settings.update_device_layer(data, mqtt={"host": "broker.plant-a.lan"})  # the TUI's edit
    dev.slots["A"].write_bytes(_slot_image(tmp_path, v1))

    bundle = io.BytesIO()
    write_bundle(
        bundle, key=dev.key, product=PRODUCT, targets=[TARGET], version="2.0.0",
        security_version=1, created=1_750_000_000,
        payloads=[PayloadSource("rootfs.img", "full", _slot_image(tmp_path, v2), "none")],
        chunk_size=CHUNK,
    )  # fmt: skip
    bundle.seek(0)
    result = install(
        bundle, policy=dev.policy(), loader=dev.loader(), booted="A", targets=dev.slots,
        data_dir=data,
    )  # fmt: skip
    assert result.slot == "B" and result.version == "2.0.0"

    # Booted into B: its own telemetry.json, read out of the installed slot file.
    cfg = load_config(data / "edgekiln" / "pipeline.json")
    mqtt, tele = settings.effective(
        cfg.mqtt, cfg.telemetry, slot=_slot_file(dev.slots["B"], tmp_path), data=data
    )
    assert mqtt is not None and tele is not None
    assert (mqtt.host, mqtt.port) == ("broker.plant-a.lan", 1884)  # device host, v2's port
    assert tele.window_s == 30 and tele.drift_psi == 0.3  # v2's recipe, not the stale block
    assert mqtt.buffer_dir == str(data / "edgekiln" / "mqtt-buffer")
    ident = resolve(tele)
    assert (ident.device, ident.site, ident.target) == ("cam-7", "plant-a", "generic-x86-64")
    # Rolled back to A: v1's recipe layer again, the device's layer still on top.
    mqtt, tele = settings.effective(
        cfg.mqtt, cfg.telemetry, slot=_slot_file(dev.slots["A"], tmp_path), data=data
    )
    assert mqtt is not None and tele is not None
    assert (mqtt.host, mqtt.port, tele.window_s) == ("broker.plant-a.lan", 1883, 60)


def test_layers_without_a_slot_file_and_without_a_broker(tmp_path: Path) -> None:
    from appliance.telemetry.config import TelemetryConfig
    from appliance.telemetry.mqtt_sink import MqttConfig

    data = tmp_path / "data"
    none = tmp_path / "absent.json"
    assert settings.effective(None, None, slot=none, data=data) == (None, None)
    # An older image: pipeline.json's blocks are the base.
    m, t = settings.effective(
        MqttConfig(host="old"), TelemetryConfig(window_s=5), slot=none, data=data
    )
    assert m is not None and m.host == "old" and t is not None and t.window_s == 5
    # A recipe without [telemetry]: off, even with a stale pipeline.json block.
    off = tmp_path / "off.json"
    off.write_text('{"format": 1}')
    assert settings.effective(MqttConfig(host="old"), None, slot=off, data=data) == (None, None)
    # ...unless the device's own layer names a broker: on, with the default settings.
    settings.update_device_layer(data, mqtt={"host": "mine", "port": 1999})
    m, t = settings.effective(None, None, slot=off, data=data)
    assert m is not None and (m.host, m.port) == ("mine", 1999)
    assert t is not None and t.window_s == 60 and t.data_dir == str(data)
    settings.update_device_layer(data, mqtt={"port": None})  # None drops a key
    m, _ = settings.effective(None, None, slot=off, data=data)
    assert m is not None and m.port == 1883


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("{", "not JSON"),
        ('{"format": 2}', "format: expected an object with format 1"),
        ('{"colour": 1}', "unknown keys \\['colour'\\]"),
        ('{"mqtt": []}', "mqtt: expected an object"),
        ('{"mqtt": {"host": "h", "port": "x"}}', "Expected `int`"),
    ],
)
def test_bad_layer_files_are_refused_naming_the_file(
    tmp_path: Path, body: str, needle: str
) -> None:
    data = tmp_path / "data"
    path = data / settings.DEVICE_FILE
    path.parent.mkdir(parents=True)
    path.write_text(body)
    with pytest.raises(TelemetryError, match=needle) as info:
        settings.effective(None, None, slot=tmp_path / "absent", data=data)
    assert str(path) in str(info.value)
