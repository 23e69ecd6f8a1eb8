"""Deterministic base/new image pairs shaped like ext4 slots (4 KiB-aligned files that move)."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

from appliance.bundle import PayloadSource, write_bundle
from tests.bundle.kit import CREATED, KEY, PRODUCT, TARGET

BLOCK = 4096
CHUNK = 64 * 1024


def _blob(rng: random.Random, size: int) -> bytes:
    """Text-like, partly compressible bytes (like code and data files)."""
    words = [hashlib.sha256(b"%d" % i).hexdigest()[: rng.randint(3, 12)] for i in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words).encode() + rng.choice([b" ", b"\n", b"\x00\x01", b"="])
    return bytes(out[:size])


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def image_pair(seed: int = 7, files: int = 40) -> tuple[bytes, bytes]:
    """(base, new): files laid out block-aligned; new grows one, edits some, adds, drops one."""
    rng = random.Random(seed)
    contents = [_blob(rng, rng.randint(1000, 40000)) for _ in range(files)]
    meta = _blob(rng, 3 * BLOCK)
    base = _pad(meta) + b"".join(_pad(c) for c in contents)
    new_contents = list(contents)
    new_contents[3] = contents[3] + _blob(rng, 9000)  # grows: everything after moves
    for k in (10, 20):  # small edits inside (a "package upgrade")
        c = bytearray(contents[k])
        for _ in range(20):
            c[rng.randrange(len(c))] = rng.randrange(256)
        new_contents[k] = bytes(c)
    del new_contents[30]
    new_contents.append(rng.randbytes(20000))  # a new, incompressible "model"
    meta2 = bytearray(meta)
    meta2[100:108] = b"v2-meta!"
    new = _pad(bytes(meta2)) + b"".join(_pad(c) for c in new_contents) + b"tail"
    return base, new


def write_pair(tmp: Path, seed: int = 7) -> tuple[Path, Path]:
    base, new = image_pair(seed)
    (tmp / "base.img").write_bytes(base)
    (tmp / "new.img").write_bytes(new)
    return tmp / "base.img", tmp / "new.img"


def delta_bundle(base: Path, new: Path, chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    write_bundle(
        out,
        key=KEY,
        product=PRODUCT,
        targets=[TARGET],
        version="2.0.0",
        security_version=5,
        created=CREATED,
        payloads=[PayloadSource.delta(new, base)],
        chunk_size=chunk_size,
    )
    return out.getvalue()


def release_keys(tmp: Path) -> Path:
    """``tmp`` with a release key made by ``kiln keys new rel`` and the keyring ``ring.json``."""
    from tests.bundle.test_cli import run

    assert run("kiln", "keys", "new", "rel", "--dir", str(tmp / "keys")).returncode == 0
    ring = run(
        "kiln", "keys", "keyring", str(tmp / "ring.json"), "--add", str(tmp / "keys/rel.pub")
    )
    assert ring.returncode == 0, ring.stderr
    return tmp
