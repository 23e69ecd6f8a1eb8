"""kiln publish: TUF keys only with --create-keys; N deltas and the size limit from the recipe."""

from __future__ import annotations

import os
from pathlib import Path

from image.release.keys import create_key, load_private_key
from image.release.publish import publish
from tests.bundle.test_cli import PASS
from tests.bundle.test_cli import run as run_cli
from tests.delta.kit import image_pair
from tests.release.test_autodelta import _bundle

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_new_channel_needs_create_keys(tmp_path: Path, keys_home: Path) -> None:
    key = load_private_key(create_key("release", tmp_path / "k", PASS.encode())[0], PASS.encode())
    bundle = _bundle(tmp_path / "v1.bundle", key, image_pair(3)[0], "1.0.0")
    repo = tmp_path / "www" / "repo"
    done = run_cli("kiln", "publish", str(bundle), str(repo))
    assert done.returncode != 0
    # the error names the missing key's path and the way out
    assert str(keys_home) in done.stderr and "root.pem does not exist" in done.stderr
    assert "--create-keys" in done.stderr
    assert not keys_home.exists() and not (repo / "metadata").exists()  # nothing created
    done = run_cli("kiln", "publish", "--create-keys", str(bundle), str(repo))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in next(keys_home.iterdir()).iterdir()) == [
        "root.pem", "snapshot.pem", "targets.pem", "timestamp.pem",
    ]  # fmt: skip
    # the next publish finds them (no flag needed)
    v2 = _bundle(tmp_path / "v2.bundle", key, image_pair(3)[1], "2.0.0")
    assert run_cli("kiln", "publish", str(v2), str(repo)).returncode == 0


def test_keys_are_never_created_for_an_existing_channel(tmp_path: Path, keys_home: Path) -> None:
    """A lost online key is not silently replaced by one the channel's root does not trust."""
    key = load_private_key(create_key("release", tmp_path / "k", PASS.encode())[0], PASS.encode())
    v1, v2 = image_pair(4)
    repo = tmp_path / "www" / "repo"
    publish(_bundle(tmp_path / "v1.bundle", key, v1, "1.0.0"), repo, create_keys=True)
    lost = next(keys_home.glob("repo-*/timestamp.pem"))
    lost.unlink()
    before = (repo / "metadata" / "timestamp.json").read_bytes()
    bundle = _bundle(tmp_path / "v2.bundle", key, v2, "2.0.0")
    done = run_cli("kiln", "publish", "--create-keys", str(bundle), str(repo))
    assert done.returncode != 0
    assert f"{lost} does not exist" in done.stderr, done.stderr
    assert not lost.exists()
    assert (repo / "metadata" / "timestamp.json").read_bytes() == before


def _recipe(tmp_path: Path, deltas: int, max_mib: int) -> Path:
    base = os.path.relpath(REPO_ROOT / "recipes" / "generic-x86-64.toml", tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'extends = "{base}"\n[update]\ndeltas = {deltas}\nmax_bundle_mib = {max_mib}\n'
    )
    return recipe


def test_deltas_and_the_size_limit_come_from_the_recipe(tmp_path: Path, keys_home: Path) -> None:
    key_path, _, _ = create_key("release", tmp_path / "keys", PASS.encode())
    key = load_private_key(key_path, PASS.encode())
    v1, v2 = image_pair(7)
    v3 = v2[:5000] + b"three" + v2[5005:]
    repo = tmp_path / "www" / "repo"
    publish(_bundle(tmp_path / "v1.bundle", key, v1, "1.0.0"), repo, create_keys=True)
    publish(_bundle(tmp_path / "v2.bundle", key, v2, "2.0.0"), repo)
    full3 = _bundle(tmp_path / "v3.bundle", key, v3, "3.0.0")
    recipe = _recipe(tmp_path, deltas=1, max_mib=1)
    done = run_cli("kiln", "publish", "--recipe", str(recipe), "--key", str(key_path),
                   str(full3), str(repo))  # fmt: skip
    assert done.returncode == 0, done.stderr
    # N = 1 from the recipe: a delta from the newest release only
    assert "devices on 2.0.0 (image " in done.stdout, done.stdout
    assert "devices on 1.0.0" not in done.stdout
    # a flag wins over the recipe
    full4 = _bundle(tmp_path / "v4.bundle", key, v3[:6000] + b"four" + v3[6004:], "4.0.0")
    done = run_cli("kiln", "publish", "--recipe", str(recipe), "--key", str(key_path),
                   "--deltas", "0", str(full4), str(repo))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "devices on" not in done.stdout
    # the size limit from the recipe: a 2 MiB bundle is refused, a flag lifts the limit
    big = _bundle(tmp_path / "v5.bundle", key, os.urandom(2 << 20), "5.0.0")
    done = run_cli("kiln", "publish", "--recipe", str(recipe), str(big), str(repo))
    assert done.returncode != 0 and "over the 1 MiB devices take" in done.stderr, done.stderr
    done = run_cli("kiln", "publish", "--recipe", str(recipe), "--max-bundle-mib", "4",
                   "--key", str(key_path), str(big), str(repo))  # fmt: skip
    assert done.returncode == 0, done.stderr
