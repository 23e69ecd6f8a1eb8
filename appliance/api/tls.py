"""The device's TLS certificate: made once on data at first start, pinned by laptops.

A self-signed ECDSA P-256 certificate whose subject is the device id. No CA is involved: the
laptop pins the SHA-256 of the certificate (DER) at pairing, as shown on the TUI's Pair screen
and in the mDNS TXT record. The key is written 0600 with the power-cut-safe writer.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path

from appliance.api.errors import CertificateError
from appliance.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

CERT_NAME = "api-cert.pem"
KEY_NAME = "api-key.pem"
VALID_DAYS = 36500  # pinned, never chained: expiry would only brick pairing on a clockless box


def fingerprint_of_der(der: bytes) -> str:
    """``sha256:`` + hex of a DER certificate (what laptops pin)."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def cert_fingerprint(cert_path: Path) -> str:
    """The pinned fingerprint of the PEM certificate at ``cert_path``."""
    import ssl

    try:
        der = ssl.PEM_cert_to_DER_cert(cert_path.read_text("ascii"))
    except (OSError, ValueError) as exc:
        raise CertificateError(
            f"cannot read the API certificate {cert_path}: {exc}; delete it (and {KEY_NAME}) "
            "to make a new one, then pair the laptops again"
        ) from None
    return fingerprint_of_der(der)


def ensure_certificate(api_dir: Path, device_id: str) -> tuple[Path, Path, str]:
    """(cert, key, fingerprint) in ``api_dir``; made on first call, reused after."""
    cert_path, key_path = api_dir / CERT_NAME, api_dir / KEY_NAME
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path, cert_fingerprint(cert_path)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgekiln {device_id}"[:64])])
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .sign(key, hashes.SHA256())
    )
    try:
        api_dir.mkdir(parents=True, exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        atomic_write_bytes(key_path, key_pem, mode=0o600)
        atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    except OSError as exc:
        raise CertificateError(f"cannot write the API certificate into {api_dir}: {exc}") from exc
    fp = fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
    log.warning("made the LAN API certificate %s (%s)", cert_path, fp)
    return cert_path, key_path, fp
