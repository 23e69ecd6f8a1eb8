"""The arm64 base's options: /etc/ssl/certs made by the host's tools, as the emulated run makes it.

The hook runs ca-certificates' own ``update-ca-certificates`` (the host's copy of the same
script stands in for the package's) with the host's sh, sed and openssl on a tree; the links it
leaves must name paths inside the image, the bundle must hold every enabled certificate.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from image.build import rootfs
from image.build.foreign_base import CA_DIVERT_HOOK, CA_NATIVE_HOOK, CA_RUN, UPDATE_CA
from image.recipe import load_recipe

pytestmark = pytest.mark.integration

CERTS = Path("/usr/share/ca-certificates")
SCRIPT = Path(UPDATE_CA)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A root holding ca-certificates' files, configured (the .conf) but not yet updated."""
    if not (SCRIPT.is_file() and (CERTS / "mozilla").is_dir() and shutil.which("openssl")):
        pytest.fail("ca-certificates and openssl are needed (tools/bootstrap.sh installs them)")
    root = tmp_path / "root"
    shutil.copytree(CERTS / "mozilla", root / "usr/share/ca-certificates/mozilla")
    (root / "usr/sbin").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "usr/sbin")
    (root / "etc/ssl/certs").mkdir(parents=True)
    (root / "usr/local/share/ca-certificates").mkdir(parents=True)
    names = sorted(p.name for p in (root / "usr/share/ca-certificates/mozilla").glob("*.crt"))
    # one certificate deselected, as a technician's dpkg-reconfigure would
    conf = [f"mozilla/{n}" for n in names[1:]] + [f"!mozilla/{names[0]}"]
    (root / "etc/ca-certificates.conf").write_text("# test\n" + "\n".join(conf) + "\n")
    return root


def test_certs_made_by_host_tools_point_inside_the_image(tree: Path) -> None:
    subprocess.run(["sh", "-c", CA_RUN, "sh", str(tree)], check=True, timeout=300)
    certs = tree / "etc/ssl/certs"
    enabled = [
        line for line in (tree / "etc/ca-certificates.conf").read_text().splitlines()
        if line and line[0] not in "#!"
    ]  # fmt: skip
    pems = {p.name: os.readlink(p) for p in certs.glob("*.pem")}
    assert len(pems) == len(enabled) > 100
    for name, target in pems.items():
        assert target.startswith("/usr/share/ca-certificates/mozilla/"), (name, target)
        assert (tree / target.lstrip("/")).is_file(), target
    hashes = [p for p in certs.iterdir() if re.fullmatch(r"[0-9a-f]{8}\.\d", p.name)]
    assert len(hashes) >= len(enabled)  # openssl rehash: <subject hash>.N -> <name>.pem
    assert all(os.readlink(p) in pems for p in hashes)
    assert not any(str(tree) in os.readlink(p) for p in certs.iterdir() if p.is_symlink())
    bundle = (certs / "ca-certificates.crt").read_bytes()
    expected = b""
    for rel in enabled:
        data = (tree / "usr/share/ca-certificates" / rel).read_bytes()
        expected += data if data.endswith(b"\n") else data + b"\n"
    assert bundle == expected
    assert (certs / "ca-certificates.crt").stat().st_mode & 0o777 == 0o644


def test_without_ca_certificates_the_hook_leaves_the_tree_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/ssl/certs").mkdir(parents=True)
    subprocess.run(["sh", "-c", CA_RUN, "sh", str(root)], check=True, timeout=60)
    assert list((root / "etc/ssl/certs").iterdir()) == []


def test_arm64_base_diverts_update_ca_certificates_and_amd64_does_not(recipe_dir: Path) -> None:
    arm64 = load_recipe(recipe_dir / "coral-usb-arm64.toml")
    argv = rootfs.bootstrap_command(arm64, Path("/x"))
    assert f"--essential-hook={CA_DIVERT_HOOK}" in argv
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    # certificates before the initrd; both after the cleanup of apt's caches
    assert hooks.index(f"--customize-hook={CA_NATIVE_HOOK}") < len(hooks) - 1
    assert "update-initramfs" in hooks[-1]
    amd64 = load_recipe(recipe_dir / "generic-x86-64.toml")
    assert not any(
        "update-ca-certificates" in a for a in rootfs.bootstrap_command(amd64, Path("/x"))
    )
