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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zeroconf import ServiceInfo

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
        from zeroconf import IPVersion, Zeroconf

        self._snapshot = snapshot
        self._port = port
        self._name = instance_name(device_id)
        self._host = self._name.split(".", 1)[0] + ".local."
        address, properties = snapshot()
        self._zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
        self._current = (address, properties)
        self._info = self._make_info(address, properties)
        self._zc.register_service(self._info, allow_name_change=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mdns-refresh", daemon=True)
        self._thread.start()
        log.info("advertising %s on %s:%d", self._name, address, port)

    def refresh(self) -> bool:
        """Re-announce if the address or a TXT value changed; whether it did."""
        address, properties = self._snapshot()
        if (address, properties) == self._current:
            return False
        if address != self._current[0]:
            # The responder's sockets are bound to the old address: withdraw there, start over.
            from zeroconf import IPVersion, Zeroconf

            self._zc.unregister_service(self._info)
            self._zc.close()
            self._zc = Zeroconf(interfaces=[address], ip_version=IPVersion.V4Only)
            self._current = (address, properties)
            self._info = self._make_info(address, properties)
            self._zc.register_service(self._info, allow_name_change=True)
            log.info("re-registered %s on new address %s", self._info.name, address)
            return True
        self._current = (address, properties)
        self._info = self._make_info(address, properties, self._info.name)
        self._zc.update_service(self._info)
        log.info("re-announced %s (%s)", self._info.name, address)
        return True

    def _make_info(
        self, address: str, properties: dict[str, str], name: str | None = None
    ) -> ServiceInfo:
        from zeroconf import ServiceInfo

        return ServiceInfo(
            SERVICE_TYPE,
            name or self._name,
            addresses=[socket.inet_aton(address)],
            port=self._port,
            properties=properties,
            server=self._host,
        )

    def _watch(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                self.refresh()
            except Exception:
                log.warning("cannot refresh the mDNS record", exc_info=True)

    def close(self) -> None:
        """Withdraw the record (goodbye) and stop."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()  # a refresh in progress finishes before the record is withdrawn
        try:
            self._zc.unregister_service(self._info)
        except Exception as exc:  # the interface may be gone: the record then expires (TTL)
            log.warning("cannot withdraw the mDNS record %s: %r", self._info.name, exc)
        finally:
            self._zc.close()
