"""The slot file system's UUID stays the same across a product's versions (smaller deltas)."""

from __future__ import annotations

from pathlib import Path

from image.build.identity import slot_fs_uuid, uuid_seed
from image.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _version(tmp_path: Path, version: str, target: str = "generic-x86-64") -> Path:
    path = tmp_path / f"{target}-{version}.toml"
    path.write_text(f'extends = "{RECIPES / target}.toml"\nversion = "{version}"\n')
    return path


def test_slot_uuid_is_one_per_product_and_target_not_per_version(tmp_path: Path) -> None:
    v1 = load_recipe(_version(tmp_path, "1.0.0"), check_files=False)
    v2 = load_recipe(_version(tmp_path, "2.0.0"), check_files=False)
    assert uuid_seed(v1) != uuid_seed(v2)  # disk and partition UUIDs still name the version
    assert slot_fs_uuid(v1) == slot_fs_uuid(v2)
    other = load_recipe(_version(tmp_path, "1.0.0", "intel-openvino"), check_files=False)
    assert slot_fs_uuid(other) != slot_fs_uuid(v1)
