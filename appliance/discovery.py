"""mDNS advertisement of this device: ``_edgekiln._tcp.local.`` with python-zeroconf.

The TXT record carries what a technician's laptop needs to list and pair devices without
connecting to them: ``id``, ``name``, ``site``, ``target``, ``version``, ``slot`` (the booted
one), ``mode`` (primary / fallback / degraded / no frames), ``port`` (the LAN API) and ``fp``
(the API certificate's SHA-256, which ``kiln pair`` pins). :class:`Advertiser` re-reads these
and the interface address every few seconds and re-announces when one changed; ``close``
withdraws the record (goodbye packets). zeroconf is imported here only (the ``lan`` extra).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

SERVICE_TYPE = "_edgekiln._tcp.local."
REFRESH_S = 5.0

Snapshot = Callable[[], tuple[str, dict[str, str]]]  # (IPv4 address, TXT properties)


def instance_name(device_id: str) -> str:
    """The DNS-SD instance name of a device (its id, which is unique on data)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in device_id)[:60] or "device"
    return f"{safe}.{SERVICE_TYPE}"


class Advertiser:
    """Keep one device's service record announced while the API runs."""

    def __init__(self, device_id: str, port: int, snapshot: Snapshot) -> None:
        from zeroconf import IPVersion, ServiceInfo, Zeroconf

        self._snapshot = snapshot
        self._port = port
        self._name = instance_name(device_id)
        self._host = self._name.split(".", 1)[0] + ".local."
        address, properties = snapshot()
        self._zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
        self._current = (address, properties)
        self._info = ServiceInfo(
            SERVICE_TYPE,
            self._name,
            addresses=[socket.inet_aton(address)],
            port=port,
            properties=properties,
            server=self._host,
        )
        self._zc.register_service(self._info, allow_name_change=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mdns-refresh", daemon=True)
        self._thread.start()
        log.info("advertising %s on %s:%d", self._name, address, port)

    def refresh(self) -> bool:
        """Re-announce if the address or a TXT value changed; whether it did."""
        from zeroconf import ServiceInfo

        address, properties = self._snapshot()
        if (address, properties) == self._current:
            return False
        self._current = (address, properties)
        self._info = ServiceInfo(
            SERVICE_TYPE,
            self._info.name,
            addresses=[socket.inet_aton(address)],
            port=self._port,
            properties=properties,
            server=self._host,
        )
        self._zc.update_service(self._info)
        log.info("re-announced %s (%s)", self._info.name, address)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.refresh()
            except Exception:
                log.warning("cannot refresh the mDNS record", exc_info=True)

    def close(self) -> None:
        """Withdraw the record (goodbye) and stop."""
        self._stop.set()
        try:
            self._zc.unregister_service(self._info)
        finally:
            self._zc.close()
