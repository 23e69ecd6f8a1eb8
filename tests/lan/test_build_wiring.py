"""The recipe's ``[lan]`` table and the API unit in the image overlay."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from appliance.api.netif import interface_address
from image.build import rootfs
from image.recipe import RecipeError, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _recipe(tmp_path: Path, text: str) -> Path:
    out = tmp_path / "recipes"
    shutil.copytree(RECIPES, out, ignore=shutil.ignore_patterns("models"), dirs_exist_ok=True)
    path = out / "site.toml"
    path.write_text('extends = "generic-x86-64.toml"\n' + text)
    return path


def test_lan_api_is_off_by_default_and_on_when_asked(tmp_path: Path) -> None:
    plain = load_recipe(RECIPES / "generic-x86-64.toml", check_files=False).recipe
    assert plain.lan.api is False
    on = load_recipe(
        _recipe(tmp_path, '[lan]\napi = true\ninterface = "enp0s2"\n'), check_files=False
    ).recipe
    assert (on.lan.api, on.lan.interface, on.lan.port) == (True, "enp0s2", 8443)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[lan]\nport = 0\n", "lan.port"),
        ('[lan]\ninterface = "eth0; rm"\n', "lan.interface"),
        ('[lan]\napi = "yes"\n', "lan.api"),
        ("[lan]\nlisten = 1\n", "lan.listen"),
    ],
)
def test_bad_lan_settings_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(_recipe(tmp_path, text), check_files=False)
    assert info.value.field == field


def fake_base(root: Path) -> Path:
    """A Debian base tree with just what ``rootfs.assemble_root`` reads (a kernel, an initrd)."""
    for d in ("boot", "etc/systemd/system", "etc/systemd/network"):
        (root / d).mkdir(parents=True)
    (root / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"kernel")
    (root / "boot" / "initrd.img-6.1.0-9-amd64").write_bytes(b"initrd")
    return root


@pytest.mark.parametrize("enabled", [False, True])
def test_api_unit_rendered_and_enabled_only_when_asked(tmp_path: Path, enabled: bool) -> None:
    config = rootfs.OverlayConfig(
        watchdog_sec=30,
        runtime_watchdog_sec=30,
        slots_spec="grub:/boot/efi",
        device_json=b"{}",
        keyring=None,
        lan_api=enabled,
        lan_interface="enp0s2",
        lan_port=9443,
    )
    out = rootfs.assemble_root(
        fake_base(tmp_path / "base"), tmp_path / "root", runtime=None, models={}, config=config
    )
    unit = (out / "etc/systemd/system/edgekiln-api.service").read_text()
    assert "api serve --interface enp0s2 --port 9443" in unit
    assert "EDGEKILN_SLOTS=grub:/boot/efi" in unit
    wants = out / "etc/systemd/system/multi-user.target.wants/edgekiln-api.service"
    assert os.path.lexists(wants) is enabled


def test_interface_address_auto_and_by_name() -> None:
    assert interface_address("lo") == "127.0.0.1"
    assert interface_address("auto")  # the default route's interface (or the first with IPv4)


def test_a_recipe_without_lan_keeps_its_digest(tmp_path: Path) -> None:
    plain = load_recipe(_recipe(tmp_path, ""), check_files=False)
    assert "lan" not in plain.to_dict()
    on = load_recipe(_recipe(tmp_path, "[lan]\napi = true\n"), check_files=False)
    assert on.to_dict()["lan"] == {"api": True} and on.digest != plain.digest
