"""Bad channels: each is one explained event, nothing installed, a backoff, bounded disk."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.ota import agent_state
from tools.powercut import _image

from .agent_kit import AgentDevice, make_device, publish_to, release
from .channelserver import Server

CASES = {
    "server-down": "update.channel-failed",
    "metadata-500": "update.channel-failed",
    "bundle-404": "update.download-interrupted",
    "bundle-500": "update.download-interrupted",
    "truncated-body": "update.download-interrupted",
    "stalled-server": "update.download-interrupted",
    "wrong-key-metadata": "update.channel-failed",
    "expired-metadata": "update.channel-failed",
    "target-longer-than-tuf-says": "update.download-refused",
    "bundle-signature-fails": "update.download-refused",
}
EXPLAINED = {
    "server-down": "Connection refused",
    "metadata-500": "500",
    "bundle-404": "404",
    "bundle-500": "500",
    "truncated-body": "interrupted",
    "stalled-server": "timed out",
    "wrong-key-metadata": "signed by 0/1 keys",
    "expired-metadata": "xpired",
    "target-longer-than-tuf-says": "signed",
    "bundle-signature-fails": "not in keyring",
}


def _resign_timestamp(repo: Path, keys_home: Path, *, expired: bool, foreign: bool) -> None:
    """timestamp.json re-signed: by a key root does not trust, or already expired."""
    from datetime import UTC, datetime, timedelta

    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata
    from tuf.api.serialization.json import JSONSerializer

    from image.release.publish import _signer

    path = repo / "metadata" / "timestamp.json"
    md = Metadata.from_file(str(path))
    md.signed.version += 1
    if expired:
        md.signed.expires = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    signer = (
        CryptoSigner(Ed25519PrivateKey.generate())
        if foreign
        else _signer(next(keys_home.glob("repo-*")), "timestamp")
    )
    md.signatures.clear()
    md.sign(signer)
    md.to_file(str(path), JSONSerializer(compact=False))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_channel(case: str, tmp_path: Path, www: Server, keys_home: Path) -> None:
    d: AgentDevice = make_device(tmp_path, www)
    v2 = release(d.dev, tmp_path, 2, "2.0.0")
    if case == "bundle-signature-fails":
        v2 = release(d.dev, tmp_path, 2, "2.0.0", key=Ed25519PrivateKey.generate())
    publish_to(www, v2)
    repo = www.root / "repo"
    served = next((repo / "targets").rglob("*.full.bundle"), None)
    if case == "server-down":
        d.channel = f"http://127.0.0.1:{_closed_port()}/repo"
    elif case == "metadata-500":
        www.faults["timestamp.json"] = ("status", 500)
    elif case == "bundle-404":
        www.faults["full.bundle"] = ("status", 404)
    elif case == "bundle-500":
        www.faults["full.bundle"] = ("status", 500)
    elif case == "truncated-body":
        www.faults["full.bundle"] = ("truncate", 40_000)
    elif case == "stalled-server":
        www.faults["full.bundle"] = ("stall", 3.0)
    elif case in ("wrong-key-metadata", "expired-metadata"):
        _resign_timestamp(repo, keys_home, expired=case == "expired-metadata",
                          foreign=case == "wrong-key-metadata")  # fmt: skip
    elif case == "target-longer-than-tuf-says":
        # The mirror serves another validly signed, longer bundle under the signed name.
        for path in (repo / "targets").rglob("*.full.bundle"):
            path.write_bytes(d.dev._bundle(_image(5) + _image(6), "2.0.0"))
    loader_before = d.dev.loader().read()
    slot_b = d.dev.slots["B"].read_bytes()
    www.clear()
    before = time.time()
    assert d.run() == CASES[case]
    event = d.events()[-1]
    assert event["kind"] == CASES[case]
    assert EXPLAINED[case] in event["detail"], event["detail"]
    # nothing installed
    assert d.dev.loader().read() == loader_before
    assert d.dev.slots["B"].read_bytes() == slot_b
    assert d.reboots == []
    # a backoff
    state = agent_state.load(d.data)
    assert state.failures == 1 and state.next_attempt > before + agent_state.BACKOFF_BASE_S / 2 - 1
    assert event["retry_in_s"] > 0
    # bounded disk: at most the signed length of the one release, nothing refused kept
    length = v2.stat().st_size
    assert d.downloads() <= length
    if CASES[case] == "update.download-refused":
        assert not list((d.data / "updates").glob("*.bundle*"))
    if case == "target-longer-than-tuf-says":  # stopped before its payload was asked for
        assert served is not None
        assert sum(h.sent for h in www.hits if "/targets/" in h.path) < length // 4
    assert d.run() == "update.backoff"  # the next timer run waits
