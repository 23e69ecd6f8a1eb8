"""Deltas at image chunk sizes other than the 1 MiB default are read by today's devices.

The manifest's ``chunk_size`` is signed and read by every device (a power of two in [4 KiB,
16 MiB]); nothing on the device assumes 1 MiB: a delta chunk's wire bound
(``delta.chunk_bound``), its reference (``MAX_REFERENCE``: 16 MiB, the largest chunk), the
installer's O_DIRECT regions and the download journal's units (the manifest's own wire chunks)
follow the manifest. This checks the largest sizes end to end through ``appliance install``, as
a device runs it (docs/decisions.md §8: every chunk's image digest checked before the write).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.bundle import peek_manifest
from appliance.bundle.delta import chunk_bound
from appliance.bundle.manifest import MAX_CHUNK_SIZE
from tests.bundle.test_cli import run
from tests.delta.kit import release_keys

pytestmark = pytest.mark.integration
MIB = 1 << 20
IDENTITY = ["--product", "acme-cam", "--target", "generic-x86-64", "--security-version", "3"]


def _pair(d: Path) -> tuple[Path, Path]:
    """A 20 MiB base and a new image: a block-aligned insert, an edit and a swapped 'model'."""
    rng = random.Random(11)
    base = bytearray(rng.randbytes(20 * MIB))
    new = bytearray(base)
    new[9 * MIB : 9 * MIB + 300_000] = rng.randbytes(300_000)  # a model swap
    new[4 * MIB - 100 : 4 * MIB + 100] = bytes(200)  # an edit across a 4 MiB chunk boundary
    new[17 * MIB : 17 * MIB] = rng.randbytes(8192)  # an insert: the rest moves by 2 blocks
    (d / "v1.img").write_bytes(bytes(base))
    (d / "v2.img").write_bytes(bytes(new))
    return d / "v1.img", d / "v2.img"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return release_keys(tmp_path_factory.mktemp("deltachunks"))


@pytest.mark.parametrize("chunk", [4 * MIB, MAX_CHUNK_SIZE])
def test_appliance_install_applies_a_delta_with_large_chunks(keys: Path, chunk: int) -> None:
    d = keys / f"c{chunk}"
    d.mkdir()
    old, new = _pair(d)
    bundle = d / "d.bundle"
    done = run(
        "kiln", "bundle", "--slot-image", str(new), "--delta-from", str(old), *IDENTITY,
        "--version", "2.0.0", "--key", str(keys / "keys/rel.key"),
        "--chunk-size", str(chunk), "-o", str(bundle),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(bundle, "rb") as f:
        m = peek_manifest(f, source=str(bundle))
    assert m.chunk_size == chunk
    (payload,) = m.payloads
    assert payload.kind == "delta"
    size = new.stat().st_size
    assert len(payload.chunks) == -(-size // chunk)
    assert all(c.size <= chunk_bound(chunk) for c in payload.chunks)
    (d / "data").mkdir()
    out = d / "out.img"
    out.write_bytes(b"")
    argv = [
        sys.executable, "-m", "appliance.cli", "install", str(bundle),
        f"--loader=file:{d / 'slots.env'}", "--booted=A", f"--keyring={keys / 'ring.json'}",
        "--product=acme-cam", "--target=generic-x86-64", f"--slot=A={old}", f"--slot=B={out}",
        f"--data-dir={d / 'data'}",
    ]  # fmt: skip
    install = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    assert out.read_bytes()[:size] == new.read_bytes()
