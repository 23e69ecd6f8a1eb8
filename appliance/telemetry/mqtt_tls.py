"""Why an MQTT TLS connection failed, in words a technician can act on.

paho reports a refused handshake as the raw OpenSSL text (``[SSL: TLSV1_ALERT_UNKNOWN_CA] ...``),
either from ``connect()`` (our side refused the broker's certificate) or, with TLS 1.3, from the
first read after the handshake (the broker refused ours: TLS 1.3 clients send their certificate
after they consider the handshake done, so the broker's alert arrives on the next read).
:func:`explain` turns that text into a sentence naming the config field and the fix.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.telemetry.mqtt_sink import MqttConfig

log = logging.getLogger(__name__)


def cert_not_after(path: str) -> datetime.datetime | None:
    """The end of a PEM certificate's validity, or None if it cannot be read."""
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc
    except (OSError, ValueError):
        return None


def _client_cert(cfg: MqttConfig) -> str:
    if cfg.cert_file is None:
        return "no client certificate"
    end = cert_not_after(cfg.cert_file)
    until = f", valid until {end:%Y-%m-%d %H:%M} UTC" if end is not None else ""
    return f"client certificate cert_file {cfg.cert_file}{until}"


def explain(error: str, cfg: MqttConfig) -> str:  # noqa: PLR0911 (one return per case)
    """One sentence: what the broker (or we) refused, which config field, what to do."""
    where = f"mqtt {cfg.host}:{cfg.port}"
    code = error.upper()
    if "ALERT_CERTIFICATE_REQUIRED" in code or "PEER DID NOT RETURN A CERTIFICATE" in code:
        return (
            f"{where} requires a client certificate and this device sent none: set cert_file "
            f"and key_file in the mqtt block (raw: {error})"
        )
    if "ALERT_UNKNOWN_CA" in code:
        return (
            f"{where} does not trust this device's {_client_cert(cfg)}: it must be issued by a "
            f"CA the broker's cafile holds (raw: {error})"
        )
    if "ALERT_CERTIFICATE_EXPIRED" in code:
        return (
            f"{where} refused this device's {_client_cert(cfg)} as expired: renew the "
            f"certificate (or check the clocks) (raw: {error})"
        )
    if "ALERT_CERTIFICATE_REVOKED" in code:
        return f"{where} says this device's {_client_cert(cfg)} is revoked (raw: {error})"
    if "ALERT_BAD_CERTIFICATE" in code or "ALERT_UNSUPPORTED_CERTIFICATE" in code:
        return (
            f"{where} refused this device's {_client_cert(cfg)} (bad or unsuitable, e.g. "
            f"missing the clientAuth usage) (raw: {error})"
        )
    if "CERTIFICATE_VERIFY_FAILED" in code or "HOSTNAME MISMATCH" in code:
        return (
            f"{where}: the broker's certificate does not verify against ca_file {cfg.ca_file} "
            f"(wrong CA, expired, or not issued for {cfg.host!r}) (raw: {error})"
        )
    return f"{where}: {error}"


REFUSALS = ("ALERT_", "CERTIFICATE_VERIFY_FAILED", "HOSTNAME MISMATCH", "REFUSED THE CONNECTION")


def is_refusal(error: str) -> bool:
    """True when the broker (or our TLS check) refused us: a person must fix a certificate or
    credential; False for an unreachable broker, which the buffer rides out by itself."""
    code = error.upper()
    return any(marker in code for marker in REFUSALS)


def warn_if_expired(cfg: MqttConfig) -> None:
    """Log (not refuse) a client certificate already expired by this device's clock.

    Not a refusal: the device clock may be wrong (docs/decisions.md §6); the broker decides.
    """
    if cfg.cert_file is None:
        return
    end = cert_not_after(cfg.cert_file)
    if end is not None and end < datetime.datetime.now(datetime.UTC):
        log.warning(
            "mqtt: client certificate %s expired at %s UTC by this device's clock; the broker "
            "will likely refuse it: renew it",
            cfg.cert_file,
            f"{end:%Y-%m-%d %H:%M}",
        )
