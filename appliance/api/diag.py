"""What the API reports: identity, status, paged events and the diagnostics tar.

The diagnostics tar holds ``versions.json``, ``slots.json``, ``env.json``, the tails of
``events.jsonl`` and ``actions.jsonl``, ``journal.txt`` (journalctl, else the agent's log file on
data) and ``config/`` (the JSON and network files on data). Every value whose key looks like a
secret (password, secret, token, key, credential, psk) is replaced by ``<redacted>``; the API's
own directory (certificate key, token hashes) is never included.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.device import Device

TAIL_BYTES = 1024 * 1024
JOURNAL_LINES = 2000
SECRET_KEY = re.compile(r"pass|secret|token|key|cred|psk", re.IGNORECASE)
REDACTED = "<redacted>"
ENV_PREFIXES = ("EDGEKILN_", "LANG", "PATH", "TZ")
CONFIG_SUFFIXES = (".json", ".toml", ".network", ".netdev", ".link", ".conf")
MAX_PAGE = 500


def read_text_file(path: Path, default: str = "") -> str:
    """The stripped text of a small file on data, or ``default``."""
    try:
        return path.read_text("utf-8").strip()[:128] or default
    except (OSError, UnicodeDecodeError):
        return default


def identity(device: Device) -> dict[str, str]:
    """Device id, name and site (data: ``device-id``, ``name``, ``site``), target, version."""
    device_id = device.device_id()
    return {
        "id": device_id,
        "name": read_text_file(device.state_dir / "name", device_id),
        "site": read_text_file(device.state_dir / "site"),
        "product": device.config.product,
        "target": device.config.target,
        "version": device.config.version,
    }


def status(device: Device, fingerprint: str) -> dict[str, Any]:
    """Identity + the TUI's status snapshot + the API certificate's fingerprint."""
    from appliance.tui.devstatus import collect_status

    snapshot = dataclasses.asdict(collect_status(device, time.time()))
    return {**identity(device), "fingerprint": fingerprint, "status": snapshot}


def events_page(path: Path, offset: int, limit: int) -> dict[str, Any]:
    """Lines ``offset .. offset+limit`` of a JSON-lines file (torn lines kept as text)."""
    limit = max(1, min(limit, MAX_PAGE))
    items: list[Any] = []
    total = 0
    try:
        with path.open("rb") as handle:
            for total, raw in enumerate(handle, start=1):
                if offset < total <= offset + limit:
                    try:
                        items.append(json.loads(raw))
                    except ValueError:
                        items.append({"raw": raw.decode("utf-8", "replace").rstrip("\n")})
    except FileNotFoundError:
        pass
    following = offset + len(items)
    return {
        "offset": offset,
        "total": total,
        "items": items,
        "next": following if following < total else None,
    }


def redact(value: Any) -> Any:
    """``value`` with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_lines(text: str) -> str:
    """``key=value`` / ``key: value`` lines with a secret-looking key keep only the key."""
    out = []
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*[=:]", line)
        secret = match is not None and SECRET_KEY.search(match.group(1))
        out.append(f"{match.group(1)}={REDACTED}" if secret and match else line)
    return "\n".join(out) + "\n"


def _tail(path: Path, max_bytes: int = TAIL_BYTES) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read()
    except OSError:
        return b""


def _journal(device: Device) -> bytes:
    exe = shutil.which("journalctl")
    if exe is not None and not device.demo:
        proc = subprocess.run(
            [exe, "-n", str(JOURNAL_LINES), "--no-pager", "-o", "short-iso"],
            check=False,
            capture_output=True,
            timeout=20,
        )
        if proc.returncode == 0:
            return proc.stdout
    return _tail(device.log_dir / "edgekiln-agent.log")


def _slots(device: Device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        state = device.loader().read()
        out["loader"] = {
            "committed": state.committed,
            "trying": state.trying,
            "tries_left": state.tries_left,
            "bad": sorted(state.bad),
        }
        out["booted"] = device.booted()
    except Exception as exc:
        out["loader_error"] = str(exc)
    try:
        import msgspec

        from appliance.state import load_state

        out["update_state"] = msgspec.to_builtins(load_state(device.data_dir))
    except Exception as exc:
        out["update_state_error"] = str(exc)
    return out


def _config_files(device: Device) -> list[tuple[str, bytes]]:
    files: list[tuple[str, bytes]] = []
    roots = [(device.state_dir, "edgekiln"), (device.network_dir, "network")]
    for root, label in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if rel.parts[0] == "api" or not path.is_file() or path.is_symlink():
                continue
            if path.suffix not in CONFIG_SUFFIXES or path.stat().st_size > TAIL_BYTES:
                continue
            raw = path.read_bytes()
            try:
                text = json.dumps(redact(json.loads(raw)), indent=2, sort_keys=True) + "\n"
            except ValueError:
                text = redact_lines(raw.decode("utf-8", "replace"))
            files.append((f"config/{label}/{rel}", text.encode()))
    return files


def diagnostics_tar(device: Device, fingerprint: str) -> bytes:
    """The whole diagnostics bundle as an uncompressed tar (a few MiB at most)."""
    env = {
        k: (REDACTED if SECRET_KEY.search(k) else v)
        for k, v in sorted(os.environ.items())
        if k.startswith(ENV_PREFIXES)
    }
    versions = {
        "appliance": __version__,
        "python": sys.version,
        "platform": platform.platform(),
        "device_json": redact(dataclasses.asdict(device.config))
        if dataclasses.is_dataclass(device.config)
        else redact(_builtins(device.config)),
        "identity": identity(device),
        "fingerprint": fingerprint,
        "made": time.time(),
    }
    members: list[tuple[str, bytes]] = [
        ("versions.json", _json(versions)),
        ("slots.json", _json(_slots(device))),
        ("env.json", _json(env)),
        ("events.jsonl", _tail(device.events_path)),
        ("actions.jsonl", _tail(device.actions_path)),
        ("journal.txt", _journal(device)),
        *_config_files(device),
    ]
    buffer = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(f"diag/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _builtins(value: Any) -> Any:
    import msgspec

    return msgspec.to_builtins(value)


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
