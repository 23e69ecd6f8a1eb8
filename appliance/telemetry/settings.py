"""Where the telemetry configuration lives, and how its layers combine.

Three layers, lowest first:

1. **The running slot's** ``/etc/edgekiln/telemetry.json`` (beside device.json): the image
   recipe's ``[telemetry]`` table, rendered by the builder. It travels with the slot, so an
   update installed over the air brings its recipe's settings, and a rollback brings the old
   ones back. When the slot has this file, the ``mqtt``/``telemetry`` blocks of pipeline.json
   are not read (older images wrote the recipe's blocks there at flash time: a stale copy).
   Without it (older images, development machines) those blocks are the base.
2. **The device's own** ``DATA/edgekiln/telemetry-device.json``: per-device overrides set by
   provisioning (``kiln flash --provision`` or a provisioning folder on data, see
   :mod:`appliance.telemetry.provision`) and by the technician TUI (broker host, site). Keys
   are merged one by one into the ``mqtt`` and ``telemetry`` blocks, so a device keeps its own
   broker or certificate while the slot's recipe changes the window or drift settings.

Both files: ``{"format": 1, "mqtt": {...}, "telemetry": {...}}`` (each block optional; keys as
in pipeline.json). Relative paths in ``ca_file``/``cert_file``/``key_file``/``buffer_dir`` are
relative to the data partition's mount point. A broker only in the device layer switches
telemetry on with the default settings.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from appliance.fsutil import atomic_write_bytes
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.errors import TelemetryError
from appliance.telemetry.mqtt_sink import MqttConfig

log = logging.getLogger(__name__)

FORMAT = 1
SLOT_FILE = "telemetry.json"  # beside device.json on the slot
DEVICE_FILE = "edgekiln/telemetry-device.json"  # under the data partition
_PATH_KEYS = ("ca_file", "cert_file", "key_file", "buffer_dir")
_BLOCKS = ("mqtt", "telemetry")


def slot_file() -> Path:
    """The running slot's recipe layer (beside ``$EDGEKILN_DEVICE_CONFIG`` / device.json)."""
    device_json = Path(os.environ.get("EDGEKILN_DEVICE_CONFIG", "/etc/edgekiln/device.json"))
    return device_json.parent / SLOT_FILE


def data_dir() -> Path:
    """The data partition's mount point (``$EDGEKILN_DATA``, else ``/data``)."""
    return Path(os.environ.get("EDGEKILN_DATA", "/data"))


def read_layer(path: Path) -> dict[str, dict[str, Any]] | None:
    """One layer file's blocks, or None when the file does not exist."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TelemetryError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise TelemetryError(f"{path}: not JSON ({exc}); rewrite or remove the file") from None
    if not isinstance(doc, dict) or doc.get("format", FORMAT) != FORMAT:
        raise TelemetryError(f"{path}: format: expected an object with format {FORMAT}")
    unknown = sorted(set(doc) - {"format", *_BLOCKS})
    if unknown:
        raise TelemetryError(f"{path}: unknown keys {unknown} (allowed: format, mqtt, telemetry)")
    out: dict[str, dict[str, Any]] = {}
    for name in _BLOCKS:
        block = doc.get(name)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise TelemetryError(f"{path}: {name}: expected an object")
        out[name] = block
    return out


def effective(
    mqtt: MqttConfig | None,
    telemetry: TelemetryConfig | None,
    *,
    slot: Path | None = None,
    data: Path | None = None,
) -> tuple[MqttConfig | None, TelemetryConfig | None]:
    """The ``mqtt`` and ``telemetry`` blocks in force: slot (or pipeline.json) then device."""
    slot = slot or slot_file()
    data = data or data_dir()
    slot_layer = read_layer(slot)
    if slot_layer is not None:
        if mqtt is not None or telemetry is not None:
            log.info(
                "telemetry: %s is the recipe's layer; pipeline.json's blocks are not read", slot
            )
        base_m, base_t = slot_layer.get("mqtt"), slot_layer.get("telemetry")
    else:
        base_m = msgspec.structs.asdict(mqtt) if mqtt is not None else None
        base_t = msgspec.structs.asdict(telemetry) if telemetry is not None else None
    device_path = data / DEVICE_FILE
    device = read_layer(device_path) or {}
    over_m, over_t = device.get("mqtt"), device.get("telemetry")
    m = {**(base_m or {}), **(over_m or {})} if (base_m or over_m) else None
    if m is None or "host" not in m:
        return None, None
    t: dict[str, Any] | None = None
    if base_t is not None or over_t is not None or base_m is None:
        t = {"data_dir": str(data), **(base_t or {}), **(over_t or {})}
    where = device_path if over_m or over_t else slot
    for key in _PATH_KEYS:
        value = m.get(key)
        if isinstance(value, str) and value and not value.startswith("/"):
            m[key] = str(data / value)
    try:
        m_cfg = msgspec.convert(m, MqttConfig)
        t_cfg = msgspec.convert(t, TelemetryConfig) if t is not None else None
    except msgspec.ValidationError as exc:
        raise TelemetryError(f"{where}: {exc}") from None
    return m_cfg, t_cfg


def update_device_layer(
    data: Path, *, mqtt: dict[str, Any] | None = None, telemetry: dict[str, Any] | None = None
) -> Path:
    """Merge keys into ``DATA/edgekiln/telemetry-device.json`` (atomic); None drops a key."""
    path = data / DEVICE_FILE
    doc: dict[str, Any] = {"format": FORMAT, **(read_layer(path) or {})}
    for name, changes in (("mqtt", mqtt), ("telemetry", telemetry)):
        if not changes:
            continue
        block = dict(doc.get(name) or {})
        for key, value in changes.items():
            if value is None:
                block.pop(key, None)
            else:
                block[key] = value
        doc[name] = block
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
    return path
