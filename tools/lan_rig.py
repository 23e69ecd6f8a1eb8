"""Site-LAN rig (tests/lan, tools/bench_lan_push.py): a device network namespace joined to
this one by a veth pair, and file-backed devices running the real ``appliance api serve``.

The laptop side is the test process itself (the root namespace's end of the veth), so mDNS
multicast and the API cross a real interface and nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.bundle import Keyring, PayloadSource, TrustedKey, write_bundle

PRODUCT, TARGET = "lan-test", "generic-x86-64"
REPO = Path(__file__).resolve().parents[1]


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here (not root, no ip, no veth)."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclasses.dataclass
class Veth:
    """The device namespace and the two ends' addresses."""

    ns: str
    host_if: str
    dev_if: str
    host_addr: str
    dev_addr: str

    @classmethod
    def make(cls) -> Veth:
        n = os.getpid() % 100000
        net = f"10.{231 + n % 20}.{n % 250}"
        veth = cls(f"ekdev{n}", f"ekl{n}", f"ekd{n}", f"{net}.2", f"{net}.1")
        try:
            _ip("netns", "add", veth.ns)
        except (NetnsUnavailable, FileNotFoundError) as exc:
            raise NetnsUnavailable(str(exc)) from None
        try:
            _ip(
                "link",
                "add",
                veth.host_if,
                "type",
                "veth",
                "peer",
                "name",
                veth.dev_if,
                "netns",
                veth.ns,
            )
            _ip("addr", "add", f"{veth.host_addr}/24", "dev", veth.host_if)
            _ip("link", "set", veth.host_if, "up")
            _ip("-n", veth.ns, "addr", "add", f"{veth.dev_addr}/24", "dev", veth.dev_if)
            _ip("-n", veth.ns, "link", "set", veth.dev_if, "up")
            _ip("-n", veth.ns, "link", "set", "lo", "up")
            _ip("-n", veth.ns, "route", "add", "224.0.0.0/4", "dev", veth.dev_if)
        except NetnsUnavailable:
            veth.remove()
            raise
        return veth

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)


def image(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclasses.dataclass
class Release:
    """A signing key, its keyring file and bundles made with it."""

    root: Path
    key: Ed25519PrivateKey = dataclasses.field(default_factory=Ed25519PrivateKey.generate)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.keyring = self.root / "keyring.json"
        self.keyring.write_bytes(
            Keyring(version=1, keys=(TrustedKey.from_public_key(raw, "release"),)).to_bytes()
        )

    def bundle(self, name: str, data: bytes, version: str = "2.0.0") -> Path:
        out = io.BytesIO()
        write_bundle(
            out,
            key=self.key,
            product=PRODUCT,
            targets=[TARGET],
            version=version,
            security_version=1,
            created=1_750_000_000,
            payloads=[PayloadSource("rootfs.img", "full", data, "none")],
            chunk_size=1 << 20,
        )
        path = self.root / name
        path.write_bytes(out.getvalue())
        return path


@dataclasses.dataclass
class LanDevice:
    """A file-backed device (slot image files, a file loader, data dir) and its API process."""

    root: Path
    index: int
    release: Release
    image_size: int = 256 * 1024
    site: str = "plant-1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        state = self.root / "data" / "edgekiln"
        state.mkdir(parents=True, exist_ok=True)
        (state / "device-id").write_text(f"dev{self.index:02d}\n")
        (state / "site").write_text(self.site + "\n")
        (self.root / "device.json").write_text(
            json.dumps({"product": PRODUCT, "target": TARGET, "version": "1.0.0"})
        )
        self.slots["A"].write_bytes(image(1, self.image_size))
        self.slots["B"].write_bytes(image(99, self.image_size))

    @property
    def id(self) -> str:
        return f"dev{self.index:02d}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def slots(self) -> dict[str, Path]:
        return {"A": self.root / "rootfs_a.img", "B": self.root / "rootfs_b.img"}

    @property
    def loader_file(self) -> Path:
        return self.root / "slots.env"

    @property
    def events(self) -> list[dict[str, object]]:
        path = self.data / "edgekiln" / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "EDGEKILN_DATA": str(self.data),
            "EDGEKILN_DEVICE_CONFIG": str(self.root / "device.json"),
            "EDGEKILN_SLOTS": f"file:{self.loader_file}",
            "EDGEKILN_BOOTED_SLOT": "A",
            "PYTHONPATH": str(REPO),
        }

    def start(
        self, veth: Veth, port: int, *extra: str, mdns: bool = False, wait: bool = True
    ) -> None:
        """Run ``appliance api serve`` in the device namespace; wait until it listens."""
        self.port = port
        cmd = [
            "ip", "netns", "exec", veth.ns,
            sys.executable, "-m", "appliance.cli", "api", "serve",
            *([] if "--interface" in extra else ["--bind", veth.dev_addr]), "--port", str(port),
            "--keyring", str(self.release.keyring),
            "--slot", f"A={self.slots['A']}", "--slot", f"B={self.slots['B']}",
            "--simulate-reboot", "--mdns" if mdns else "--no-mdns",
            "--console", str(self.console), *extra,
        ]  # fmt: skip
        self.console.touch()
        log = (self.root / "serve.log").open("wb")
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=log)
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until the server says it listens (its log), or raise with the log."""
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while b"LAN API on" not in (self.root / "serve.log").read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "serve.log").read_text())
            time.sleep(0.05)

    @property
    def console(self) -> Path:
        """The file the server writes pairing codes to (its ``/dev/console``)."""
        return self.root / "console.log"

    def fingerprint(self) -> str:
        from appliance.api.tls import cert_fingerprint

        return cert_fingerprint(self.data / "edgekiln" / "api" / "api-cert.pem")

    def pair_code(self) -> str:
        from appliance.api.auth import new_pair_code

        return new_pair_code(self.data / "edgekiln" / "api")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(predicate: object, timeout: float = 30.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False
