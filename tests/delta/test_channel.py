"""kiln publish (TUF repository) + the device's poll over a real loopback HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.bundle import FileSink, PayloadSource, open_bundle, write_bundle
from appliance.bundle.delta_apply import BaseSlot
from appliance.ota.channel import ChannelError, check_download, poll
from appliance.ota.fetch import fetch
from image.release.publish import publish
from tests.bundle.kit import CREATED, KEY, PRODUCT, TARGET, policy

from .kit import CHUNK, write_pair


@contextmanager
def serve_dir(root: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def bundle_file(path: Path, payload: PayloadSource, version: str) -> Path:
    out = io.BytesIO()
    write_bundle(
        out, key=KEY, product=PRODUCT, targets=[TARGET], version=version, security_version=1,
        created=CREATED, payloads=[payload], chunk_size=CHUNK,
    )  # fmt: skip
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(autouse=True)
def keys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default TUF keys go here, not into the real ~/.config (and not beside the repo)."""
    home = tmp_path / "offline" / "tuf-keys"
    monkeypatch.setenv("EDGEKILN_TUF_KEYS", str(home))
    return home


@pytest.fixture
def channel(tmp_path: Path) -> dict[str, Path]:
    base, new = write_pair(tmp_path)
    repo = tmp_path / "www" / "repo"
    full1 = bundle_file(tmp_path / "v1.bundle", PayloadSource.slot_image(base), "1.0.0")
    assert publish(full1, repo, create_keys=True) == [f"{PRODUCT}/{TARGET}/full.bundle"]
    shutil.copytree(repo / "metadata", tmp_path / "old-metadata")
    full2 = bundle_file(tmp_path / "v2.bundle", PayloadSource.slot_image(new), "2.0.0")
    delta = bundle_file(tmp_path / "d.bundle", PayloadSource.delta(new, base), "2.0.0")
    publish(full2, repo, create_keys=True)
    publish(delta, repo, create_keys=True)
    return {"dir": tmp_path, "repo": repo, "base": base, "new": new, "full2": full2,
            "delta": delta, "root": repo / "metadata" / "1.root.json"}  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_device_on_the_base_gets_the_delta_and_rebuilds_v2(channel: dict[str, Path]) -> None:
    state = channel["dir"] / "data"
    with serve_dir(channel["repo"].parent) as www:
        url = f"{www}/repo"
        choice = poll(url, state / "tuf", channel["root"], PRODUCT, TARGET, sha(channel["base"]))
        assert choice is not None and choice.kind == "delta" and choice.version == "2.0.0"
        path = fetch(choice.url, state / "updates", policy())
    check_download(path, choice)
    assert path.read_bytes() == channel["delta"].read_bytes()
    out = channel["dir"] / "slot_b"
    out.write_bytes(b"")
    with open(path, "rb") as f, FileSink(out) as sink, BaseSlot(channel["base"]) as slot:
        verified = open_bundle(f, policy())
        verified.stream_payload(verified.manifest.payloads[0].name, sink, base=slot)
        verified.finish()
    assert out.read_bytes() == channel["new"].read_bytes()


def test_other_devices_get_the_full_bundle_or_nothing(channel: dict[str, Path]) -> None:
    state = channel["dir"] / "data" / "tuf"
    with serve_dir(channel["repo"].parent) as www:
        url = f"{www}/repo"
        choice = poll(url, state, channel["root"], PRODUCT, TARGET, "ab" * 32)
        assert choice is not None and choice.kind == "full"
        assert choice.sha256 == sha(channel["full2"])
        assert poll(url, state, channel["root"], PRODUCT, TARGET, sha(channel["new"])) is None
        with pytest.raises(ChannelError, match="no release"):
            poll(url, state, channel["root"], PRODUCT, "other-target", None)


def test_rolled_back_channel_metadata_is_refused(channel: dict[str, Path]) -> None:
    state = channel["dir"] / "data" / "tuf"
    with serve_dir(channel["repo"].parent) as www:
        url = f"{www}/repo"
        assert poll(url, state, channel["root"], PRODUCT, TARGET, None) is not None
        # A mirror (or attacker) serves the older, validly signed metadata again.
        shutil.rmtree(channel["repo"] / "metadata")
        shutil.copytree(channel["dir"] / "old-metadata", channel["repo"] / "metadata")
        with pytest.raises(ChannelError, match="BadVersionNumberError"):
            poll(url, state, channel["root"], PRODUCT, TARGET, None)


def test_cli_publish_then_poll_and_fetch(tmp_path: Path, keys_home: Path) -> None:
    from appliance.bundle import Keyring, TrustedKey
    from tests.bundle.kit import raw_pub
    from tests.bundle.test_cli import run

    base, new = write_pair(tmp_path)
    delta = bundle_file(tmp_path / "d.bundle", PayloadSource.delta(new, base), "2.0.0")
    full = bundle_file(tmp_path / "f.bundle", PayloadSource.slot_image(new), "2.0.0")
    repo = tmp_path / "www" / "repo"
    for b in (full, delta):
        done = run("kiln", "publish", "--create-keys", str(b), str(repo))
        assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "www").rglob("*.pem"))  # nothing served holds a key
    assert len(list(keys_home.glob("repo-*/root.pem"))) == 1
    ring = tmp_path / "ring.json"
    ring.write_bytes(Keyring(1, (TrustedKey.from_public_key(raw_pub(KEY)),)).to_bytes())
    with serve_dir(repo) as www:  # REPO_DIR alone is what gets served
        done = run(
            "appliance", "update", "poll", www, "--tuf-root",
            str(repo / "metadata" / "1.root.json"), "--data-dir", str(tmp_path / "data"),
            "--keyring", str(ring), "--product", PRODUCT, "--target", TARGET,
            "--active", str(base), "--fetch",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("delta 2.0.0 ")
    assert Path(lines[-1]).read_bytes() == delta.read_bytes()
