"""The encoder reads both images from their files: its memory does not grow with the images."""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from pathlib import Path

from appliance.bundle.delta_encode import iter_delta_chunks

MIB = 1 << 20


def test_encode_memory_is_not_the_images(tmp_path: Path) -> None:
    base, new = tmp_path / "base.img", tmp_path / "new.img"
    rng = random.Random(3)
    with open(base, "wb") as b, open(new, "wb") as n:
        for i in range(48):
            block = rng.randbytes(MIB)
            b.write(block)
            if i == 30:  # one changed 4 KiB block: a small bsdiff window, not the whole image
                block = block[:8192] + rng.randbytes(4096) + block[12288:]
            n.write(block)
    rebuilt = hashlib.sha256()
    tracemalloc.start()
    try:
        for chunk, _wire in iter_delta_chunks(base, new, MIB, level=3, workers=1):
            rebuilt.update(chunk)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rebuilt.hexdigest() == hashlib.sha256(new.read_bytes()).hexdigest()
    # Holding the two images alone was 96 MiB; now the block index and a few chunks.
    assert peak < 32 * MIB, peak / MIB  # measured 18 MiB
