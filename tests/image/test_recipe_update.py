"""The recipe's [update] table: checks naming file and field, and what the slot gets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from image.build import rootfs
from image.build.device_files import update_config
from image.recipe import RecipeError, load_recipe

ROOT = '{"signed": {"_type": "root", "version": 1}, "signatures": []}'
GOOD = """
[update]
channels = ["https://updates.example.com/repo"]
tuf_root = "tuf/root.json"
window = "22:30-04:00"
bandwidth_cap = "200k"
metered = true
reboot = "window"
max_bundle_mib = 300
"""


def _recipe(recipe_dir: Path, text: str) -> Path:
    (recipe_dir / "tuf").mkdir(exist_ok=True)
    (recipe_dir / "tuf" / "root.json").write_text(ROOT)
    path = recipe_dir / "upd.toml"
    path.write_text('extends = "generic-x86-64.toml"\n' + text)
    return path


def test_update_table_becomes_update_json_and_the_tuf_root(recipe_dir: Path) -> None:
    loaded = load_recipe(_recipe(recipe_dir, GOOD))
    assert loaded.to_dict()["update"]["window"] == "22:30-04:00"  # what kiln build --plan prints
    baked = update_config(loaded)
    assert baked is not None
    doc = json.loads(baked[0])
    assert doc["rate"] == 200 * 1024 and doc["max_bundle_bytes"] == 300 << 20
    assert doc["tuf_root"] == "/etc/edgekiln/tuf-root.json" and baked[1] == ROOT.encode()
    import msgspec

    from appliance.ota.agent_config import UpdateConfig

    config = msgspec.json.decode(baked[0], type=UpdateConfig)  # the device reads it as is
    assert config.reboot == "window" and config.channels == ["https://updates.example.com/repo"]


def test_no_update_table_means_updates_off(recipe_dir: Path) -> None:
    assert update_config(load_recipe(recipe_dir / "generic-x86-64.toml")) is None


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        (('"https://updates.example.com/repo"', '"ftp://x.example/repo"'), "update.channels.0",
         "http(s)"),
        (('tuf_root = "tuf/root.json"', 'tuf_root = "tuf/none.json"'), "update.tuf_root",
         "not a TUF root"),
        (('window = "22:30-04:00"', 'window = "22:30-24:00"'), "update.window", "HH:MM"),
        (('bandwidth_cap = "200k"', 'bandwidth_cap = "fast"'), "update.bandwidth_cap",
         "bytes per second"),
        (('reboot = "window"', 'reboot = "later"'), "update.reboot", "window, now, manual"),
        (('window = "22:30-04:00"\n', ""), "update.reboot", "needs update.window"),
        (("max_bundle_mib = 300", "max_bundle_mib = 0"), "update.max_bundle_mib", "from 1"),
        (("metered = true", "metered = true\npoll_interval_s = 10"), "update.poll_interval_s",
         "from 60"),
        (("max_bundle_mib = 300", "max_bundle_mib = 300\ndeltas = 21"), "update.deltas",
         "from 0 to 20"),
    ],
)  # fmt: skip
def test_bad_update_fields_name_file_and_field(
    recipe_dir: Path, change: tuple[str, str], field: str, needle: str
) -> None:
    path = _recipe(recipe_dir, GOOD.replace(*change))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.field == field, str(info.value)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_the_slot_gets_update_json_the_root_and_the_timer(tmp_path: Path) -> None:
    base = tmp_path / "base"
    for d in ("boot", "etc/systemd/system", "etc/systemd/network", "usr/lib/systemd/system"):
        (base / d).mkdir(parents=True)
    (base / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel")
    (base / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    (base / "etc" / "fstab").write_text("# base\n")
    cfg = rootfs.OverlayConfig(
        watchdog_sec=42, runtime_watchdog_sec=17, slots_spec="grub:/boot/efi",
        device_json=b"{}\n", keyring=None, update=(b"{}\n", ROOT.encode()),
        poll_interval_s=3600, poll_jitter_s=600,
    )  # fmt: skip
    out = rootfs.assemble_root(base, tmp_path / "root", runtime=None, models={}, config=cfg)
    assert (out / "etc/edgekiln/update.json").read_bytes() == b"{}\n"
    assert (out / "etc/edgekiln/tuf-root.json").read_text() == ROOT
    timer = (out / "etc/systemd/system/edgekiln-update.timer").read_text()
    assert "OnUnitInactiveSec=3600s" in timer and "RandomizedDelaySec=600s" in timer
    service = (out / "etc/systemd/system/edgekiln-update.service").read_text()
    assert "ExecStart=/opt/edgekiln/appliance/appliance update run" in service
    assert "ConditionPathExists=/etc/edgekiln/update.json" in service
    link = out / "etc/systemd/system/timers.target.wants/edgekiln-update.timer"
    assert os.readlink(link) == "/etc/systemd/system/edgekiln-update.timer"
