"""#17 vuln 2: a hostile mirror cannot make ``appliance update fetch`` buffer or keep anything.

The mirror (tests/ota/hostile.py, a real loopback http.server) answers with a canonical
``manifest.json`` header that declares 400 MiB or 8 GiB, or serves another validly signed
bundle where the TUF channel signed a smaller one. Each is refused after the first request
that shows the lie; nothing is left in ``updates/``.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest

from appliance.bundle import Keyring, PayloadSource, TrustedKey, write_bundle
from appliance.bundle.errors import SizeLimitError
from appliance.ota.fetch import Expected, Fetcher, TargetMismatchError
from tests.bundle.kit import CREATED, KEY, PRODUCT, TARGET, policy, raw_pub
from tests.bundle.test_cli import run
from tests.delta.kit import CHUNK, write_pair

from .hostile import Bytes, LyingHead, Mirror, serve

MANIFEST_LIMIT = 4 << 20
# The reader's SizeLimitError for the first header (its wording may drop the declared size:
# error texts quote no number an unauthenticated input chose).
REFUSAL = re.compile(rf"member 'manifest\.json' at byte 0 declares .*limit here.*{MANIFEST_LIMIT}")


def keyring_file(tmp_path: Path) -> Path:
    ring = tmp_path / "ring.json"
    ring.write_bytes(Keyring(1, (TrustedKey.from_public_key(raw_pub(KEY)),)).to_bytes())
    return ring


def left_in(updates: Path) -> list[str]:
    return sorted(p.name for p in updates.iterdir()) if updates.exists() else []


@pytest.mark.parametrize("declared", [400 << 20, 8**11 - 1], ids=["400MiB", "8GiB"])
def test_oversize_declared_manifest_is_refused_before_it_is_asked_for(
    tmp_path: Path, declared: int
) -> None:
    # cap: on the unfixed code the second request would buffer all of it; stop at 16 MiB.
    mirror = Mirror({"/x.bundle": LyingHead(declared, cap=16 << 20)})
    updates = tmp_path / "updates"
    with serve(mirror) as url, pytest.raises(SizeLimitError) as caught:
        Fetcher(f"{url}/x.bundle", updates, policy()).run()
    assert REFUSAL.search(str(caught.value)), caught.value
    assert mirror.requests == [("/x.bundle", "bytes=0-511")]  # refused within one request
    assert mirror.sent <= 512
    assert left_in(updates) == []


def test_cli_fetch_from_a_lying_mirror_exits_5_and_keeps_nothing(tmp_path: Path) -> None:
    mirror = Mirror({"/x.bundle": LyingHead(400 << 20, cap=16 << 20)})
    data = tmp_path / "data"
    with serve(mirror) as url:
        done = run(
            "appliance", "update", "fetch", f"{url}/x.bundle", "--data-dir", str(data),
            "--keyring", str(keyring_file(tmp_path)), "--product", PRODUCT, "--target", TARGET,
            "--retries", "0",
        )  # fmt: skip
    assert done.returncode == 5, done.stderr
    assert REFUSAL.search(done.stderr), done.stderr
    assert len(mirror.requests) == 1
    assert left_in(data / "updates") == []


def _bundle(path: Path, payload: PayloadSource, version: str) -> Path:
    out = io.BytesIO()
    write_bundle(
        out, key=KEY, product=PRODUCT, targets=[TARGET], version=version, security_version=1,
        created=CREATED, payloads=[payload], chunk_size=CHUNK,
    )  # fmt: skip
    path.write_bytes(out.getvalue())
    return path


def test_tuf_target_length_is_enforced_while_streaming(tmp_path: Path) -> None:
    """The mirror serves a validly signed but other (larger) bundle where the channel chose the
    delta: refused after the head, before its payload, and nothing stays in updates/."""
    from image.release.publish import publish

    base, new = write_pair(tmp_path)
    full = _bundle(tmp_path / "f.bundle", PayloadSource.slot_image(new), "2.0.0")
    delta = _bundle(tmp_path / "d.bundle", PayloadSource.delta(new, base), "2.0.0")
    repo = tmp_path / "www" / "repo"
    for b in (full, delta):
        publish(b, repo, keys=tmp_path / "offline-keys", create_keys=True)
    served = next((repo / "targets").rglob("*.delta-*.bundle"))
    shutil.copyfile(full, served)  # the mirror swaps the file; TUF metadata still says delta
    assert full.stat().st_size > 2 * delta.stat().st_size
    mirror = Mirror(root=tmp_path / "www")
    data = tmp_path / "data"
    with serve(mirror) as www:
        done = run(
            "appliance", "update", "poll", f"{www}/repo", "--tuf-root",
            str(repo / "metadata" / "1.root.json"), "--data-dir", str(data),
            "--keyring", str(keyring_file(tmp_path)), "--product", PRODUCT, "--target", TARGET,
            "--active", str(base), "--fetch",
        )  # fmt: skip
    assert done.returncode != 0, done.stdout
    assert "the update channel signed" in done.stderr, done.stderr
    assert left_in(data / "updates") == []
    bundle_requests = [r for r in mirror.requests if r[0].endswith(".bundle")]
    assert len(bundle_requests) == 2  # the first header, then the head: no payload request
    assert mirror.sent < full.stat().st_size // 2


def test_tuf_target_digest_mismatch_removes_the_download(tmp_path: Path) -> None:
    image = tmp_path / "img"
    image.write_bytes(bytes(5 * CHUNK))
    body = _bundle(tmp_path / "f.bundle", PayloadSource.slot_image(image), "2.0.0").read_bytes()
    mirror = Mirror({"/x.bundle": Bytes(body)})
    updates = tmp_path / "updates"
    with serve(mirror) as url, pytest.raises(TargetMismatchError, match="sha256"):
        Fetcher(f"{url}/x.bundle", updates, policy(), expected=Expected(len(body), "00" * 32)).run()
    assert left_in(updates) == []
