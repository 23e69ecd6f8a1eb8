"""A self-contained demo device in a directory: ``appliance tui --demo`` and the TUI tests.

Everything is real except the hardware: a data partition directory with the update-state file
and device id, a GRUB environment (both copies) on a fake ESP, two slot image files, a keyring and
bundles signed with a demo key (one good, three that must be refused for different reasons) on a
fake USB stick, the reference model package, a pipeline config whose camera is a generated
test pattern (``npz:``, paced at 15 fps), a results sink and events the agent would have
written, and a tiny sysfs (two network interfaces, a thermal zone). Network apply and reboot
are simulated (``Device.demo``).

The demo key is derived from a public string: it signs demo bundles only and must never be in a
real device's keyring.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from appliance.device import Device, DeviceConfig
from appliance.errors import ApplianceError

PRODUCT = "edgekiln-demo"
TARGET = "generic-x86-64"
VERSION = "1.0.0"
NEW_VERSION = "1.1.0"
PREVIOUS_VERSION = "0.9.5"
SECURITY_VERSION = 1
SLOT_SIZE = 2 << 20
CHUNK = 64 << 10
DEMO_EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z: fixed times keep demo output reproducible
BUNDLES = {
    "edgekiln-demo-1.1.0.bundle": "good",
    "edgekiln-demo-1.1.0-jetson.bundle": "wrong target",
    "edgekiln-demo-1.1.0-tampered.bundle": "signature broken",
    "edgekiln-demo-0.9.0.bundle": "older security_version",
}


class DemoError(ApplianceError):
    """The demo device cannot be built (e.g. no reference model package found)."""


def find_reference_model() -> Path:
    """``$EDGEKILN_DEMO_MODEL``, the repository's inspect-primary, or the image's model."""
    env = os.environ.get("EDGEKILN_DEMO_MODEL")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [
        here.parents[2] / "recipes" / "models" / "inspect-primary",
        Path(getattr(sys, "_MEIPASS", "/nonexistent")) / "recipes" / "models" / "inspect-primary",
        Path("/opt/edgekiln/models/primary"),
    ]
    for path in candidates:
        if (path / "model.json").is_file():
            return path
    raise DemoError(
        "no reference model package for the demo (looked in "
        + ", ".join(str(p) for p in candidates)
        + "); make one with tools/refmodel or set EDGEKILN_DEMO_MODEL=DIR"
    )


def demo_key() -> object:
    """The demo signing key (derived from a public label: demo bundles only)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = hashlib.sha256(b"edgekiln demo key: never trust on a device").digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def _slot_image(version: str) -> bytes:
    """Deterministic slot content standing in for a root filesystem."""
    block = hashlib.sha256(f"edgekiln demo rootfs {version}".encode()).digest() * 64
    return (block * (SLOT_SIZE // len(block) + 1))[:SLOT_SIZE]


def _bundle(version: str, security_version: int, target: str) -> bytes:
    from appliance.bundle import PayloadSource, write_bundle

    out = io.BytesIO()
    write_bundle(
        out,
        key=demo_key(),  # type: ignore[arg-type]
        product=PRODUCT,
        targets=[target],
        version=version,
        security_version=security_version,
        created=DEMO_EPOCH,
        payloads=[PayloadSource("rootfs.img", "full", _slot_image(version), "zstd")],
        chunk_size=CHUNK,
    )
    return out.getvalue()


def _put(path: Path, data: bytes) -> None:
    """Write a demo file (a temp tree: no fsync needed, and fsync dominated the build time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _put(path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")


def _telemetry_status(data: Path, model: str, now: float) -> None:
    """What the telemetry sink leaves after a window (appliance/telemetry/local_status.py)."""
    _write_json(
        data / "edgekiln" / "telemetry-status.json",
        {"ts": now - 12, "frames": 590, "model": model, "min_samples": 200,
         "drift": {"psi": 0.012, "samples": 2950, "threshold": 0.2, "windows": 5,
                   "drifted": False}},
    )  # fmt: skip


def _write_pattern(path: Path, frames: int = 45, size: tuple[int, int] = (160, 120)) -> None:
    """A moving test pattern as an ``npz`` array (RGB): the ``npz:`` source reads it paced at
    15 fps with numpy alone, so every target's runtime (the default image has no OpenCV) gets
    a demo camera."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = np.zeros((frames, h, w, 3), np.uint8)
    for i, img in enumerate(images):
        img[..., 2] = (xx * 255 // w).astype(np.uint8)
        img[..., 1] = (yy * 255 // h).astype(np.uint8)
        cx, cy = (i * 3) % w, h // 2
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 300] = 255
    buf = io.BytesIO()
    np.savez(buf, images=images)
    _put(path, buf.getvalue())


def _results(model: str, version: str, start: float) -> list[dict[str, object]]:
    out: list[dict[str, object]] = [
        {"type": "event", "kind": "loaded", "ts": start - 1, "reason": "primary model loaded"}
    ]
    for i in range(40):
        out.append(
            {
                "type": "result",
                "frame": i,
                "ts": round(start + i * 0.1, 3),
                "model": model,
                "version": version,
                "backend": "onnxruntime",
                "degraded": False,
                "ms": {"capture": 2.0, "pre": 1.5, "infer": 6.0 + (i % 5) * 0.5, "post": 0.5},
            }
        )
    return out


def build_demo(root: Path, model_dir: Path | None = None, now: float = DEMO_EPOCH) -> Device:
    """Create (or refresh) a demo device under ``root`` and return its facade."""
    from appliance.bundle import Keyring, TrustedKey
    from appliance.slots.grub import initial_env
    from appliance.state import SlotRecord, UpdateState, note_slot, save_state

    root = Path(root).resolve()
    model_dir = Path(model_dir) if model_dir else find_reference_model()
    from appliance.inference.package import load_package

    package = load_package(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    config = DeviceConfig(
        product=PRODUCT,
        version=VERSION,
        target=TARGET,
        security_version=SECURITY_VERSION,
        backend="onnxruntime",
        models={"primary": str(model_dir)},
        data_dir=str(data),
    )
    _write_json(root / "etc" / "edgekiln" / "device.json", json.loads(_encode(config)))
    key = demo_key()
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined]
    ring = Keyring(version=1, keys=(TrustedKey.from_public_key(raw, "demo release key"),))
    keyring_path = root / "etc" / "edgekiln" / "keyring.json"
    _put(keyring_path, ring.to_bytes())
    (data / "edgekiln").mkdir(parents=True, exist_ok=True)
    _put(data / "edgekiln" / "device-id", b"demo-0001\n")
    record = SlotRecord("A", VERSION, SECURITY_VERSION)
    save_state(data, UpdateState(security_floor=SECURITY_VERSION, committed=record))
    # Slot B still holds the release before (so "Roll back" has somewhere to go).
    note_slot(data, SlotRecord("B", PREVIOUS_VERSION, SECURITY_VERSION))
    note_slot(data, record)
    grub = root / "boot" / "efi" / "grub"
    grub.mkdir(parents=True, exist_ok=True)
    for name in ("grubenv", "grubenv.bak"):
        _put(grub / name, initial_env())
    slots = root / "slots"
    slots.mkdir(exist_ok=True)
    _put(slots / "rootfs_a.img", _slot_image(VERSION))
    _put(slots / "rootfs_b.img", _slot_image(PREVIOUS_VERSION))
    usb = root / "usb"
    usb.mkdir(exist_ok=True)
    good = _bundle(NEW_VERSION, 2, TARGET)
    tampered = bytearray(good)
    tampered[good.index(b'"version"') + 12] ^= 1  # inside the signed manifest
    payloads = {
        "edgekiln-demo-1.1.0.bundle": good,
        "edgekiln-demo-1.1.0-jetson.bundle": _bundle(NEW_VERSION, 2, "jetson-orin"),
        "edgekiln-demo-1.1.0-tampered.bundle": bytes(tampered),
        "edgekiln-demo-0.9.0.bundle": _bundle("0.9.0", 0, TARGET),
    }
    for name, blob in payloads.items():
        _put(usb / name, blob)
    pattern = root / "camera" / "demo.npz"
    if not pattern.exists():
        _write_pattern(pattern)
    sink = data / "edgekiln" / "results.jsonl"
    lines = _results(package.name, package.manifest.version, now - 4.0)
    _put(sink, b"".join(json.dumps(r).encode() + b"\n" for r in lines))
    _write_json(
        data / "edgekiln" / "pipeline.json",
        {
            "model": str(model_dir),
            "source": f"npz:{pattern}?loop=1&fps=15",
            "sink": str(sink),
            "backends": ["onnxruntime", "opencv"],
            "budget_factor": 1.0,
        },
    )
    _put(
        data / "edgekiln" / "events.jsonl",
        b"".join(
            json.dumps(e).encode() + b"\n"
            for e in (
                {"ts": now - 60, "kind": "worker_started", "mode": "primary"},
                {"ts": now - 30, "kind": "fallback", "reason": "demo: primary back end failed"},
                {"ts": now - 10, "kind": "recovered", "reason": "primary model loaded again"},
            )
        ),
    )
    _telemetry_status(data, package.name, now)
    _fake_sys(root / "sys")
    _put(data / "log" / "edgekiln-agent.log", _agent_log().encode())  # makes log/
    (data / "etc" / "systemd" / "network").mkdir(parents=True, exist_ok=True)
    return Device(
        config=config,
        data_dir=data,
        loader_spec=f"grub:{root / 'boot' / 'efi'}",
        booted_override="A",
        keyring_path=keyring_path,
        slot_targets={"A": slots / "rootfs_a.img", "B": slots / "rootfs_b.img"},
        sys_root=root,
        usb_globs=(str(usb),),
        demo=True,
    )


def _encode(config: DeviceConfig) -> bytes:
    import msgspec

    return msgspec.json.encode(config)


def _fake_sys(sys_dir: Path) -> None:
    for name, mac, state in (
        ("eth0", "52:54:00:12:34:56", "up"),
        ("wlan0", "52:54:00:ab:cd:ef", "down"),
    ):
        d = sys_dir / "class" / "net" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "address").write_text(mac + "\n")
        (d / "operstate").write_text(state + "\n")
    zone = sys_dir / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "temp").write_text("47500\n")
    (sys_dir / "class" / "video4linux").mkdir(parents=True, exist_ok=True)


def _agent_log() -> str:
    lines = [
        "2026-01-01T00:00:01 INFO appliance.supervisor: worker 412 started (primary)",
        "2026-01-01T00:00:02 INFO appliance.inference.chain: loaded inspect-primary on onnxruntime",
        "2026-01-01T00:00:30 WARNING appliance.inference.chain: fallback: primary back end failed",
        "2026-01-01T00:00:31 INFO appliance.inference.chain: loaded fallback on opencv",
        "2026-01-01T00:00:50 INFO appliance.inference.chain: recovered: primary loaded again",
        "2026-01-01T00:01:00 WARNING appliance.inference.pipeline: budget_exceeded infer 31.2 ms",
        "2026-01-01T00:02:00 INFO appliance.supervisor: heartbeat ok, 15.0 fps",
        "2026-01-01T00:03:00 ERROR appliance.inference.sources: source_lost: camera timeout",
        "2026-01-01T00:03:05 INFO appliance.inference.sources: source_reopened",
    ]
    return "\n".join(lines) + "\n"
