"""#17 vuln 7: ``kiln publish`` never puts TUF signing keys where a web server hands them out.

Before, the keys defaulted to ``REPO.keys`` beside the repository: serving the repository's
parent (as a static host often does) answered ``GET /repo.keys/targets.pem`` with the private
targets key.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance.bundle import PayloadSource, write_bundle
from tests.bundle.kit import CREATED, KEY, PRODUCT, TARGET
from tests.bundle.test_cli import run

from .test_channel import serve_dir


def _bundle(tmp_path: Path) -> Path:
    image = tmp_path / "img"
    image.write_bytes(bytes(64 << 10))
    out = io.BytesIO()
    write_bundle(
        out, key=KEY, product=PRODUCT, targets=[TARGET], version="1.0.0", security_version=1,
        created=CREATED, payloads=[PayloadSource.slot_image(image)], chunk_size=4096,
    )  # fmt: skip
    path = tmp_path / "b.bundle"
    path.write_bytes(out.getvalue())
    return path


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_default_keys_are_not_served_from_the_repository_parent(tmp_path: Path) -> None:
    www = tmp_path / "www"
    config = tmp_path / "home" / ".config"
    done = run("kiln", "publish", "--create-keys", str(_bundle(tmp_path)), str(www / "repo"),
               env={"XDG_CONFIG_HOME": str(config), "EDGEKILN_TUF_KEYS": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    with serve_dir(www) as url:  # the whole parent is served
        assert _status(f"{url}/repo/metadata/root.json") == 200
        assert _status(f"{url}/repo.keys/targets.pem") == 404
    assert not list(www.rglob("*.pem"))
    keys = list((config / "edgekiln" / "tuf-keys").glob("repo-*/*.pem"))
    assert sorted(k.name for k in keys) == [
        "root.pem",
        "snapshot.pem",
        "targets.pem",
        "timestamp.pem",
    ]
    assert str(keys[0].parent) in done.stdout  # the CLI says where the keys are


def test_default_keys_inside_the_repository_parent_are_refused(tmp_path: Path) -> None:
    www = tmp_path / "www"
    done = run("kiln", "publish", "--create-keys", str(_bundle(tmp_path)), str(www / "repo"),
               env={"EDGEKILN_TUF_KEYS": str(www / "keys")})  # fmt: skip
    assert done.returncode != 0
    assert "is inside" in done.stderr and "pass --keys DIR outside any served folder" in done.stderr
    assert not www.exists()  # nothing written: no metadata, no key


@pytest.mark.parametrize("where", ["repo/keys", "repo"])
def test_explicit_keys_inside_the_repository_are_refused(tmp_path: Path, where: str) -> None:
    www = tmp_path / "www"
    done = run("kiln", "publish", "--create-keys", str(_bundle(tmp_path)), str(www / "repo"),
               "--keys", str(www / where))  # fmt: skip
    assert done.returncode != 0
    assert "inside the repository" in done.stderr and "private keys" in done.stderr
    assert not list(tmp_path.rglob("*.pem"))


def test_keys_left_beside_the_repository_by_the_old_default_are_refused(tmp_path: Path) -> None:
    www = tmp_path / "www"
    (www / "repo.keys").mkdir(parents=True)
    (www / "repo.keys" / "targets.pem").write_bytes(b"old key")
    done = run("kiln", "publish", "--create-keys", str(_bundle(tmp_path)), str(www / "repo"),
               env={"EDGEKILN_TUF_KEYS": str(tmp_path / "offline")})  # fmt: skip
    assert done.returncode != 0
    assert "repo.keys holds TUF keys beside the repository" in done.stderr
    assert not (www / "repo").exists() and not (tmp_path / "offline").exists()


def test_online_keys_are_kept_apart(tmp_path: Path) -> None:
    from image.release.publish import publish

    www = tmp_path / "www"
    publish(_bundle(tmp_path), www / "repo", keys=tmp_path / "offline",
            online_keys=tmp_path / "online", create_keys=True)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == ["root.pem", "targets.pem"]
    assert sorted(p.name for p in (tmp_path / "online").iterdir()) == [
        "snapshot.pem",
        "timestamp.pem",
    ]
