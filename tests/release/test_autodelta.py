"""kiln publish --deltas N: deltas from the last N releases, who downloads what, size limit."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from appliance.bundle import PayloadSource, write_bundle
from appliance.ota.channel import poll
from image.release.autodelta import check_size
from image.release.keys import create_key, load_private_key
from image.release.publish import PublishError, publish
from tests.bundle.kit import CREATED, PRODUCT, TARGET
from tests.bundle.test_cli import PASS
from tests.bundle.test_cli import run as run_cli
from tests.delta.kit import image_pair
from tests.ota.channelserver import Server


def _bundle(path: Path, key: object, image: bytes, version: str) -> Path:
    out = io.BytesIO()
    write_bundle(
        out, key=key, product=PRODUCT, targets=[TARGET], version=version,  # type: ignore[arg-type]
        security_version=1, created=CREATED,
        payloads=[PayloadSource("rootfs.img.zst", "full", image, "zstd")], chunk_size=64 * 1024,
    )  # fmt: skip
    path.write_bytes(out.getvalue())
    return path


def test_publish_makes_deltas_from_the_last_releases(tmp_path: Path, www: Server) -> None:
    key_path, _, _ = create_key("release", tmp_path / "keys", PASS.encode())
    key = load_private_key(key_path, PASS.encode())
    v1, v2 = image_pair(7)
    v3 = v2[:5000] + b"three" + v2[5005:]
    repo = www.root / "repo"
    publish(_bundle(tmp_path / "v1.bundle", key, v1, "1.0.0"), repo, create_keys=True)
    publish(_bundle(tmp_path / "v2.bundle", key, v2, "2.0.0"), repo, create_keys=True)
    full3 = _bundle(tmp_path / "v3.bundle", key, v3, "3.0.0")
    done = run_cli(
        "kiln", "publish", "--deltas", "2", "--key", str(key_path), "--max-bundle-mib", "1",
        str(full3), str(repo),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"any other device downloads {full3.stat().st_size} bytes (full)" in out
    for version in ("1.0.0", "2.0.0"):
        assert f"devices on {version} (image " in out
    root = repo / "metadata" / "1.root.json"
    for image, other in ((v1, "2.0.0"), (v2, "1.0.0")):
        active = hashlib.sha256(image).hexdigest()
        choice = poll(f"{www.url}/repo", tmp_path / f"tuf-{other}", root, PRODUCT, TARGET, active)
        assert choice is not None and choice.kind == "delta" and choice.version == "3.0.0"
        assert choice.length < full3.stat().st_size
    choice = poll(f"{www.url}/repo", tmp_path / "tuf-x", root, PRODUCT, TARGET, "ab" * 32)
    assert choice is not None and choice.kind == "full"


def test_oversize_bundles_are_refused_unless_allowed(tmp_path: Path) -> None:
    bundle = tmp_path / "b.bundle"
    bundle.write_bytes(bytes(3 << 20))
    with pytest.raises(PublishError, match="over the 2 MiB devices take"):
        check_size(bundle, 2, allow_oversize=False)
    check_size(bundle, 2, allow_oversize=True)
    check_size(bundle, 3, allow_oversize=False)
    check_size(bundle, None, allow_oversize=False)
