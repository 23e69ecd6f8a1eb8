"""``kiln bundle --delta-from`` on real ext4 slot images (image.build.fs), then applied."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

import pytest

from appliance.bundle import FileSink, Keyring, Policy, open_bundle
from appliance.bundle.delta_apply import BaseSlot
from appliance.bundle.delta_base import ext4_size
from image.build.fs import fs_uuid_for, make_ext4
from tests.bundle.test_cli import run

pytestmark = pytest.mark.integration
IDENTITY = ["--product", "acme-cam", "--target", "generic-x86-64", "--security-version", "3"]


def _tree(root: Path, version: str, rng: random.Random) -> None:
    for i in range(30):
        d = root / f"usr/lib/pkg{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i}.py").write_bytes(random.Random(i).randbytes(3000 + 1000 * i))
    lib = bytearray(random.Random(99).randbytes(200_000))
    if version == "2":
        lib[5000:5010] = b"new code!!"
        lib += rng.randbytes(30_000)
    (root / "usr/lib/libthing.so").write_bytes(bytes(lib))
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/version").write_text(version)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("deltacli")
    assert run("kiln", "keys", "new", "rel", "--dir", str(d / "keys")).returncode == 0
    out = run("kiln", "keys", "keyring", str(d / "ring.json"), "--add", str(d / "keys/rel.pub"))
    assert out.returncode == 0, out.stderr
    for version in ("1", "2"):
        tree = d / f"tree{version}"
        _tree(tree, version, random.Random(5))
        make_ext4(tree, d / f"v{version}.img", 16, fs_uuid_for("t", "rootfs"), 1_750_000_000)
    return {"dir": d, "v1": d / "v1.img", "v2": d / "v2.img", "key": d / "keys/rel.key"}


def kiln_bundle(release: dict[str, Path], out: str, *extra: str, image: str = "v2") -> Path:
    path = release["dir"] / out
    done = run(
        "kiln", "bundle", "--slot-image", str(release[image]), *IDENTITY,
        "--version", "2.0.0" if image == "v2" else "1.0.0",
        "--key", str(release["key"]), "-o", str(path), *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return path


def apply(bundle: Path, base: Path, ring: Path, out: Path) -> None:
    policy = Policy(Keyring.from_bytes(ring.read_bytes()), "acme-cam", "generic-x86-64")
    out.write_bytes(b"")
    with open(bundle, "rb") as f, FileSink(out) as sink, BaseSlot(base) as slot:
        verified = open_bundle(f, policy)
        verified.stream_payload(verified.manifest.payloads[0].name, sink, base=slot)
        verified.finish()


def base_of(bundle: Path) -> dict[str, object]:
    done = run("appliance", "bundle", "info", "--json", str(bundle))
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)["payloads"][0]
    assert payload["kind"] == "delta"
    return payload  # type: ignore[no-any-return]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_delta_from_slot_image(release: dict[str, Path]) -> None:
    full = kiln_bundle(release, "full.bundle")
    delta = kiln_bundle(release, "delta.bundle", "--delta-from", str(release["v1"]))
    assert delta.stat().st_size * 5 < full.stat().st_size
    assert base_of(delta)["base_sha256"] == sha(release["v1"])
    out = release["dir"] / "applied.img"
    apply(delta, release["v1"], release["dir"] / "ring.json", out)
    assert out.read_bytes() == release["v2"].read_bytes()
    verify = run(
        "appliance", "bundle", "verify", str(delta), "--keyring", str(release["dir"] / "ring.json"),
        "--product", "acme-cam", "--target", "generic-x86-64",
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_delta_from_full_bundle_and_from_disk_image(release: dict[str, Path]) -> None:
    old_bundle = kiln_bundle(release, "v1.bundle", image="v1")
    from_bundle = kiln_bundle(release, "d-bundle.bundle", "--delta-from", str(old_bundle))
    assert base_of(from_bundle)["base_sha256"] == sha(release["v1"])
    # A GPT disk image whose rootfs_a partition (24 MiB) holds the 16 MiB v1 file system.
    disk = release["dir"] / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(40 << 20)
    script = (
        "label: gpt\nstart=2048, size=8192, name=boot\nstart=10240, size=49152, name=rootfs_a\n"
    )
    subprocess.run(["sfdisk", "-q", str(disk)], input=script, text=True, check=True)
    with open(disk, "r+b") as f:
        f.seek(10240 * 512)
        f.write(release["v1"].read_bytes())
        f.write(b"\xaa" * 4096)  # partition bytes past the file system are not the base
    assert ext4_size(disk, 10240 * 512) == release["v1"].stat().st_size
    from_disk = kiln_bundle(release, "d-disk.bundle", "--delta-from", str(disk))
    assert base_of(from_disk)["base_sha256"] == sha(release["v1"])


def test_delta_from_bundle_signed_by_another_key_is_refused(release: dict[str, Path]) -> None:
    old_bundle = kiln_bundle(release, "v1b.bundle", image="v1")
    assert (
        run("kiln", "keys", "new", "other", "--dir", str(release["dir"] / "keys")).returncode == 0
    )
    done = run(
        "kiln", "bundle", "--slot-image", str(release["v2"]), *IDENTITY, "--version", "2.0.0",
        "--key", str(release["dir"] / "keys/other.key"), "--delta-from", str(old_bundle),
        "-o", str(release["dir"] / "x.bundle"),
    )  # fmt: skip
    assert done.returncode != 0
    assert "--delta-from" in done.stderr
