"""``appliance install`` of a delta, run as a device runs it: peak RSS bounded, flat in size.

The bound is the process's own ``ru_maxrss`` (what ``/usr/bin/time -v`` reports), read by a
small probe process whose only child is the install; no wall-clock assertion.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from image.build.fs import fs_uuid_for, make_ext4
from tests.bundle.test_cli import run
from tests.delta.kit import release_keys

pytestmark = pytest.mark.integration
MIB = 1 << 20
LIMIT = 64 * MIB  # docs/decisions.md §14: apply memory <= 64 MiB is a hard limit
IDENTITY = ["--product", "acme-cam", "--target", "generic-x86-64", "--security-version", "3"]
PROBE = (
    "import resource,subprocess,sys;"
    "done=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
    "sys.stderr.write(done.stderr);"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def _tree(root: Path, model_seed: int, filler_mib: int) -> None:
    for i in range(filler_mib):
        d = root / f"usr/lib/pkg{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"lib{i}.so").write_bytes(random.Random(i).randbytes(MIB - 4096 * (i % 3)))
    (root / "opt/models").mkdir(parents=True)
    # An incompressible model swap: 3 MiB of new random bytes where the old ones were.
    (root / "opt/models/model.bin").write_bytes(random.Random(model_seed).randbytes(3 * MIB))


def _install_rss(tmp: Path, image_mib: int) -> tuple[int, str]:
    """(peak RSS bytes, import-time log) of ``appliance install`` of a v1 -> v2 delta."""
    d = tmp / f"img{image_mib}"
    d.mkdir()
    for v, seed in (("1", 1), ("2", 2)):
        _tree(d / f"tree{v}", seed, image_mib // 2)
        make_ext4(d / f"tree{v}", d / f"v{v}.img", image_mib, fs_uuid_for("m"), 1_750_000_000)
    done = run(
        "kiln", "bundle", "--slot-image", str(d / "v2.img"), "--delta-from", str(d / "v1.img"),
        *IDENTITY, "--version", "2.0.0", "--key", str(tmp / "keys/rel.key"),
        "-o", str(d / "d.bundle"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (d / "data").mkdir()
    (d / "out.img").write_bytes(b"")
    argv = [
        sys.executable, "-X", "importtime", "-m", "appliance.cli", "install", str(d / "d.bundle"),
        f"--loader=file:{d / 'slots.env'}", "--booted=A", f"--keyring={tmp / 'ring.json'}",
        "--product=acme-cam", "--target=generic-x86-64", f"--slot=A={d / 'v1.img'}",
        f"--slot=B={d / 'out.img'}", f"--data-dir={d / 'data'}",
    ]  # fmt: skip
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    )
    code, rss_kib = probe.stdout.split()
    assert code == "0", probe.stderr[-2000:]
    new = (d / "v2.img").read_bytes()
    assert (d / "out.img").read_bytes()[: len(new)] == new
    return int(rss_kib) * 1024, probe.stderr


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_keys(tmp_path_factory.mktemp("installmem"))


def test_install_of_a_delta_stays_under_64_mib_and_flat_in_image_size(keys: Path) -> None:
    small, imports = _install_rss(keys, 32)
    large, _ = _install_rss(keys, 128)
    assert small < LIMIT and large < LIMIT, (small / MIB, large / MIB)
    assert large - small < 4 * MIB, (small / MIB, large / MIB)  # flat: O(chunk), not O(image)
    # The imports that once took the CLI to ~80 MiB are not on a file install's path.
    imported = {line.rsplit("|", 1)[-1].strip() for line in imports.splitlines()}
    assert not {"numpy", "http.client", "ssl"} & imported
