"""Per-device provisioning: identity, site, broker and client certificate onto data.

A provisioning source is a ``provision.toml`` (or ``.json``) file, or a folder holding one,
with the PEM files it names beside it (paths relative to the file)::

    device_id = "cam-7"                          # required; becomes edgekiln/device-id
    site = "plant-a"                             # edgekiln/site
    broker = "mqtts://fleet.plant.lan:8883"      # optional: this device's broker
    ca = "site-ca.pem"                           # the CA the broker's certificate chains to
    cert = "cam-7.pem"                           # client certificate (mutual TLS), with key
    key = "cam-7.key"                            # its unencrypted private key

:func:`plan` checks it (certificate and key belong together, the certificate was issued by
the CA, nothing expired) and returns the files to put on data; ``kiln flash --provision``
writes them into the flashed disk's data partition, and :func:`apply_pending` writes them on
the device at boot when a technician dropped a folder at ``DATA/edgekiln/provision/``.
Certificates and key are written 0600 under ``edgekiln/pki/``; the broker and PEM paths go to
the device's own telemetry layer (:mod:`appliance.telemetry.settings`). docs/decisions.md §18.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.fsutil import atomic_write_bytes, fsync_dir
from appliance.telemetry import settings
from appliance.telemetry.errors import TelemetryError

log = logging.getLogger(__name__)

NAMES = ("provision.toml", "provision.json")
DROP_DIR = "edgekiln/provision"  # under data: picked up at boot
PKI = "edgekiln/pki"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEYS = {"device_id", "site", "broker", "ca", "cert", "key"}


class ProvisionError(TelemetryError):
    """A provisioning file is unusable (the message names the file, the field and the fix)."""


@dataclass(frozen=True)
class DataFile:
    """One file to write on data: path relative to the partition's root, bytes, mode."""

    rel: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Provision:
    """A checked provisioning source and the files it puts on data."""

    source: Path
    device_id: str
    site: str | None
    broker: str | None
    files: tuple[DataFile, ...]


def find_source(path: Path) -> Path:
    """The provisioning file itself: ``path``, or ``provision.toml``/``.json`` inside it."""
    if path.is_dir():
        for name in NAMES:
            if (path / name).is_file():
                return path / name
        raise ProvisionError(f"{path}: no {' or '.join(NAMES)} in this folder")
    if not path.is_file():
        raise ProvisionError(f"{path}: no such provisioning file")
    return path


def _load(source: Path) -> dict[str, Any]:
    try:
        raw = source.read_bytes()
        doc = tomllib.loads(raw.decode()) if source.suffix == ".toml" else json.loads(raw)
    except OSError as exc:
        raise ProvisionError(f"{source}: cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{source}: not valid {source.suffix[1:].upper()}: {exc}") from None
    if not isinstance(doc, dict):
        raise ProvisionError(f"{source}: expected a table of settings")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise ProvisionError(f"{source}: unknown fields {unknown} (known: {sorted(_KEYS)})")
    for name, value in doc.items():
        if not isinstance(value, str):
            raise ProvisionError(f"{source}: {name}: expected a string, got {value!r}")
    return doc


def broker_address(url: str) -> tuple[str, int, bool]:
    """``mqtt://HOST[:PORT]`` / ``mqtts://HOST[:PORT]`` -> (host, port, tls); ValueError if not."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"{url!r} is not mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls


def _pem(source: Path, doc: dict[str, str], field: str) -> tuple[Path, bytes]:
    path = source.parent / doc[field]
    try:
        return path, path.read_bytes()
    except OSError as exc:
        raise ProvisionError(f"{source}: {field}: {path}: cannot read ({exc.strerror})") from None


def _check_pki(
    source: Path, doc: dict[str, str], now: datetime.datetime | None
) -> dict[str, bytes]:
    """The PEM files the source names, checked against each other; {field: bytes}."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    out: dict[str, bytes] = {}
    if ("cert" in doc) != ("key" in doc):
        raise ProvisionError(
            f"{source}: cert and key go together (a client certificate and its key)"
        )
    if "cert" in doc and "ca" not in doc:
        raise ProvisionError(f"{source}: ca: a client certificate needs the CA (TLS to the broker)")
    cas: list[x509.Certificate] = []
    if "ca" in doc:
        path, raw = _pem(source, doc, "ca")
        try:
            cas = x509.load_pem_x509_certificates(raw)
        except ValueError as exc:
            raise ProvisionError(f"{source}: ca: {path} is not a PEM certificate ({exc})") from None
        out["ca"] = raw
    if "cert" in doc:
        cert_path, cert_raw = _pem(source, doc, "cert")
        key_path, key_raw = _pem(source, doc, "key")
        try:
            cert = x509.load_pem_x509_certificate(cert_raw)
        except ValueError as exc:
            raise ProvisionError(
                f"{source}: cert: {cert_path} is not a PEM certificate ({exc})"
            ) from None
        try:
            key = load_pem_private_key(key_raw, password=None)
        except TypeError:
            raise ProvisionError(
                f"{source}: key: {key_path} is encrypted; the device needs it unencrypted "
                "(openssl pkey -in KEY -out PLAIN)"
            ) from None
        except ValueError as exc:
            raise ProvisionError(
                f"{source}: key: {key_path} is not a PEM private key ({exc})"
            ) from None
        spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise ProvisionError(
                f"{source}: key: {key_path} does not belong to the certificate {cert_path}"
            )
        if not any(_issued_by(cert, ca) for ca in cas):
            raise ProvisionError(
                f"{source}: cert: {cert_path} (issuer {cert.issuer.rfc4514_string()}) was not "
                f"issued by the CA in {doc['ca']}; the broker would refuse it"
            )
        if now is not None and cert.not_valid_after_utc < now:
            raise ProvisionError(
                f"{source}: cert: {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                "issue a new one"
            )
        out["cert"], out["key"] = cert_raw, key_raw
    return out


def _issued_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature and friends: not this CA
        return False
    return True


def plan(path: Path, *, now: datetime.datetime | None = None) -> Provision:
    """Check the provisioning source at ``path`` and list the files it puts on data.

    ``now``: refuse an expired client certificate against this (trusted) time; None skips the
    check (a device at boot may not know the time yet).
    """
    source = find_source(path)
    doc = _load(source)
    device_id = doc.get("device_id", "")
    if not _ID.match(device_id):
        raise ProvisionError(
            f"{source}: device_id: {device_id!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
    site = doc.get("site")
    if site is not None and not _ID.match(site):
        raise ProvisionError(
            f"{source}: site: {site!r} must be 1-63 letters, digits, '.', '_' or '-'"
        )
    mqtt: dict[str, Any] = {}
    if "broker" in doc:
        try:
            host, port, tls = broker_address(doc["broker"])
        except ValueError as exc:
            raise ProvisionError(f"{source}: broker: {exc}") from None
        if tls and "ca" not in doc:
            raise ProvisionError(f"{source}: ca: an mqtts:// broker needs the CA's PEM file")
        mqtt.update(host=host, port=port)
    pems = _check_pki(source, doc, now)
    files = [DataFile("edgekiln/device-id", device_id.encode() + b"\n")]
    if site is not None:
        files.append(DataFile("edgekiln/site", site.encode() + b"\n"))
    names = {"ca": ("ca.pem", "ca_file"), "cert": ("client.pem", "cert_file"),
             "key": ("client.key", "key_file")}  # fmt: skip
    for field, raw in pems.items():
        name, setting = names[field]
        files.append(DataFile(f"{PKI}/{name}", raw, 0o600))
        mqtt[setting] = f"{PKI}/{name}"  # relative to data (settings.py)
    layer = {"format": settings.FORMAT, "mqtt": mqtt} if mqtt else {"format": settings.FORMAT}
    files.append(
        DataFile(settings.DEVICE_FILE, json.dumps(layer, indent=2, sort_keys=True).encode() + b"\n")
    )
    return Provision(source, device_id, site, doc.get("broker"), tuple(files))


def write_to(data: Path, prov: Provision) -> None:
    """Write the provisioning's files under the mounted data partition ``data`` (power-cut safe)."""
    for item in prov.files:
        target = data / item.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, item.data, item.mode)


def apply_pending(data: Path) -> Provision | None:
    """Apply a provisioning folder dropped at ``DATA/edgekiln/provision/``, then remove it.

    Called at boot by the agent. A bad folder is left in place (and the error raised) so the
    technician sees why; nothing of it is written.
    """
    drop = data / DROP_DIR
    if not drop.exists():
        return None
    prov = plan(drop)
    write_to(data, prov)
    shutil.rmtree(drop)  # the key now lives only under pki/, 0600
    fsync_dir(drop.parent)
    log.info("provisioned %s (site %s) from %s", prov.device_id, prov.site, drop)
    return prov
