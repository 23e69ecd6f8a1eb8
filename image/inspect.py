"""Read a built disk image without mounting it: table, grubenv, slot contents, manifest check.

Partitions are read in place: ext4 with ``debugfs 'IMAGE?offset=N'``, vfat with mtools'
``IMAGE@@OFFSET``. The signed manifest beside the image (``*.manifest.json`` + ``.sig``) is
checked against the keyring inside slot A (or a given keyring), and every partition digest it
lists is recomputed from the image.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from image.build.disk import Partition, read_table
from image.build.rootfs import file_digest
from image.errors import BuildError


class InspectError(BuildError):
    """The image or its manifest cannot be read or does not verify."""


def _debugfs_cat(image: Path, offset: int, path: str) -> bytes | None:
    done = subprocess.run(
        ["debugfs", "-R", f"cat {path}", f"{image}?offset={offset}"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0 or b"File not found" in done.stderr or b"Bad magic" in done.stderr:
        return None
    return done.stdout


def _debugfs_readlink(image: Path, offset: int, path: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", f"stat {path}", f"{image}?offset={offset}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("Fast link dest:"):
            return line.split('"')[1] if '"' in line else line.split(":", 1)[1].strip()
    return ""


def _mtools_read(image: Path, offset: int, path: str) -> bytes | None:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    done = subprocess.run(
        ["mtype", "-i", f"{image}@@{offset}", f"::{path}"],
        capture_output=True,
        env=env,
        check=False,
    )
    return done.stdout if done.returncode == 0 else None


def slot_info(image: Path, part: Partition) -> dict[str, Any]:
    """What a slot holds: device.json, kernel, model packages; or that it is empty."""
    device = _debugfs_cat(image, part.start, "/etc/edgekiln/device.json")
    if device is None:
        return {"state": "empty"}
    info: dict[str, Any] = {"state": "filled", "device": json.loads(device)}
    info["kernel"] = _debugfs_readlink(image, part.start, "/boot/vmlinuz")
    fw_env = _debugfs_cat(image, part.start, "/etc/fw_env.config")
    if fw_env is not None:  # U-Boot: the env copies Linux uses, and booti's kernel
        lines = [line for line in fw_env.decode().splitlines() if line.strip()]
        info["fw_env"] = [line.split()[0] for line in lines if not line.startswith("#")]
        image_kernel = _debugfs_cat(image, part.start, "/boot/Image")
        info["kernel_image"] = image_kernel is not None and image_kernel[0x38:0x3C] == b"ARM\x64"
    models = {}
    for role in ("primary", "fallback"):
        raw = _debugfs_cat(image, part.start, f"/opt/edgekiln/models/{role}/model.json")
        if raw:
            doc = json.loads(raw)
            models[role] = {"name": doc.get("name"), "version": doc.get("version")}
    info["models"] = models
    runtime = _debugfs_cat(image, part.start, "/opt/edgekiln/appliance/appliance")
    info["runtime"] = "present" if runtime else "missing"
    update = _debugfs_cat(image, part.start, "/etc/edgekiln/update.json")
    info["update"] = json.loads(update) if update else None  # recipe [update]
    return info


UIMAGE_MAGIC = b"\x27\x05\x19\x56"  # U-Boot legacy image header (boot.scr)


def uboot_info(image: Path, part: Partition, script: bytes) -> dict[str, Any]:
    """boot.scr and the two A/B env files on a U-Boot boot partition (docs/decisions.md §32)."""
    from appliance.slots import ubootenv
    from appliance.slots.uboot import EnvFiles

    files = EnvFiles()
    raws = [_mtools_read(image, part.start, f"/{name}") or b"" for name in files.names]
    copies: dict[str, Any] = {}
    for name, raw in zip(files.names, raws, strict=True):
        parsed = ubootenv.parse_copy(raw, redundant=True) if len(raw) == files.size else None
        copies[name] = {"flag": parsed[1], "variables": parsed[0]} if parsed else None
    return {
        "loader": "u-boot",
        "boot.scr": script[:4] == UIMAGE_MAGIC,
        "env_copies": copies,
        "env": ubootenv.choose(raws) if all(len(r) == files.size for r in raws) else None,
    }


def boot_info(image: Path, part: Partition) -> dict[str, Any]:
    """The loader's files on the boot partition: grubenv copies, or boot.scr + U-Boot env."""
    from appliance.slots import grub, grubenv

    script = _mtools_read(image, part.start, "/boot.scr")
    if script is not None:
        return uboot_info(image, part, script)
    out: dict[str, Any] = {"loader": "grub-efi"}
    for name, path in (("grubenv", grub.ENV_PATH), ("grubenv.bak", grub.ENV_BACKUP_PATH)):
        block = _mtools_read(image, part.start, path)
        out[name] = grubenv.parse(block) if block is not None else None
    out["efi"] = _mtools_read(image, part.start, "/EFI/BOOT/BOOTX64.EFI") is not None
    return out


def partition_digest(image: Path, part: Partition) -> str:
    """sha256 of one partition's bytes inside the image."""
    h = hashlib.sha256()
    with image.open("rb") as handle:
        handle.seek(part.start)
        left = part.size
        while left:
            chunk = handle.read(min(left, 4 << 20))
            if not chunk:
                raise InspectError(f"{image} ends inside partition {part.name}")
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def manifest_paths(image: Path) -> tuple[Path, Path]:
    stem = image.name.removesuffix(".img")
    return image.with_name(f"{stem}.manifest.json"), image.with_name(f"{stem}.manifest.sig")


def check_signature(manifest: Path, body: bytes, keyring_bytes: bytes | None) -> dict[str, Any]:
    """``signature`` (valid / INVALID / missing / no keyring) and ``key_id`` of a manifest."""
    from appliance.bundle.keyring import Keyring

    sig = manifest.with_name(manifest.name.removesuffix(".json") + ".sig")
    if not sig.exists() or keyring_bytes is None:
        return {"signature": "missing" if not sig.exists() else "no keyring to check against"}
    s = json.loads(sig.read_text())
    key = Keyring.from_bytes(keyring_bytes).get(s["key_id"])
    valid = key.verify(bytes.fromhex(s["signature"]), body)
    return {"signature": "valid" if valid else "INVALID", "key_id": s["key_id"]}


def check_manifest(
    image: Path, table: list[Partition], keyring_bytes: bytes | None
) -> dict[str, Any]:
    """Verify the manifest's signature and recompute every partition digest it lists."""
    manifest, _sig = manifest_paths(image)
    if not manifest.exists():
        return {"manifest": "missing"}
    body = manifest.read_bytes()
    doc = json.loads(body)
    result: dict[str, Any] = {"manifest": str(manifest), "version": doc.get("version")}
    result.update(check_signature(manifest, body, keyring_bytes))
    digests = {}
    by_name = {p.name: p for p in table}
    for name, entry in sorted(doc.get("partitions", {}).items()):
        want = entry.get("sha256")
        if want is None or name not in by_name:
            continue
        digests[name] = "ok" if partition_digest(image, by_name[name]) == want else "MISMATCH"
    result["partitions"] = digests
    loader = doc.get("components", {}).get("bootloader")
    if loader:  # a board's raw U-Boot before the first partition (recipe board.bootloader)
        with image.open("rb") as handle:
            handle.seek(int(loader["offset"]))
            raw = handle.read(int(loader["size"]))
        result["bootloader"] = (
            "ok" if hashlib.sha256(raw).hexdigest() == loader["sha256"] else "MISMATCH"
        )
    return result


def inspect_image(
    image: Path, keyring: Path | None = None, *, digests: bool = True
) -> dict[str, Any]:
    """Everything ``kiln inspect`` shows, as plain data."""
    if not image.is_file():
        raise InspectError(f"{image}: no such image file")
    if is_l4t_manifest(image):  # a Jetson build: slot files beside the manifest, no disk
        return inspect_l4t(image, keyring, digests=digests)
    table = read_table(image)
    out: dict[str, Any] = {
        "image": str(image),
        "size": image.stat().st_size,
        "partitions": [p.__dict__ for p in table],
    }
    for part in table:
        if part.name == "boot":
            out["boot"] = boot_info(image, part)
        elif part.name.startswith("rootfs_"):
            out.setdefault("slots", {})[part.name] = slot_info(image, part)
    ring: bytes | None = keyring.read_bytes() if keyring else None
    if ring is None:
        slot_a = next((p for p in table if p.name == "rootfs_a"), None)
        ring = _debugfs_cat(image, slot_a.start, "/etc/edgekiln/keyring.json") if slot_a else None
    if digests:
        out["verification"] = check_manifest(image, table, ring)
    return out


# -- L4T builds (image.build.l4t): a signed manifest beside the slot files -----------------------


def is_l4t_manifest(path: Path) -> bool:
    """Whether ``path`` is the manifest of an L4T build (what ``kiln inspect`` is given)."""
    if not path.name.endswith(".manifest.json"):
        return False
    try:
        return bool(json.loads(path.read_bytes()).get("layout") == "l4t")
    except (OSError, ValueError, AttributeError):
        return False


def inspect_l4t(manifest: Path, keyring: Path | None, *, digests: bool) -> dict[str, Any]:
    """What ``kiln inspect`` shows for an L4T build: each slot file, the signature, digests."""
    body = manifest.read_bytes()
    doc = json.loads(body)
    out: dict[str, Any] = {"image": str(manifest), "layout": "l4t", "partitions": []}
    total, ring = 0, keyring.read_bytes() if keyring else None
    verification: dict[str, Any] = {"manifest": str(manifest), "version": doc.get("version")}
    states: dict[str, str] = {}
    for part, entry in sorted(doc.get("partitions", {}).items()):
        path = manifest.with_name(str(entry.get("file", "")))
        if not path.is_file():
            states[part] = "MISSING"
            continue
        size = path.stat().st_size
        total += size
        whole = Partition(len(out["partitions"]) + 1, part, 0, size, "", "")
        out["partitions"].append(whole.__dict__ | {"file": path.name})
        out.setdefault("l4t_partitions", {})[part] = entry.get("l4t_partition")
        if part.startswith("rootfs_"):
            try:
                out.setdefault("slots", {})[part] = slot_info(path, whole)
            except ValueError as exc:  # a damaged file system: the digest check says more
                out["slots"][part] = {"state": "empty", "error": f"unreadable: {exc}"}
            if ring is None and part == "rootfs_a":
                ring = _debugfs_cat(path, 0, "/etc/edgekiln/keyring.json")
        if digests:
            states[part] = "ok" if file_digest(path) == entry.get("sha256") else "MISMATCH"
    out["size"] = total
    if digests:
        verification.update(check_signature(manifest, body, ring))
        verification["partitions"] = states
        out["verification"] = verification
    return out
