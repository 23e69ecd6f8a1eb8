"""Find devices advertising ``_edgekiln._tcp.local.`` (mDNS, python-zeroconf)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

SERVICE_TYPE = "_edgekiln._tcp.local."
RESOLVE_MS = 3000


@dataclasses.dataclass(frozen=True)
class Seen:
    """One device's record as last seen."""

    instance: str
    address: str
    port: int
    txt: dict[str, str]
    seen_at: float  # seconds after the browse started

    @property
    def id(self) -> str:
        return self.txt.get("id", self.instance.split(".", 1)[0])


def browse(
    seconds: float, interfaces: Sequence[str] | None = None, expect: int | None = None
) -> list[Seen]:
    """Devices seen within ``seconds`` (sooner once ``expect`` are resolved).

    ``interfaces`` are the laptop's IPv4 addresses to query on (default: all).
    """
    from zeroconf import (
        InterfaceChoice,
        IPVersion,
        ServiceBrowser,
        ServiceInfo,
        ServiceStateChange,
        Zeroconf,
    )

    zc = Zeroconf(
        interfaces=list(interfaces) if interfaces else InterfaceChoice.All,
        ip_version=IPVersion.V4Only,
    )
    start = time.monotonic()
    found: dict[str, Seen] = {}
    lock = threading.Lock()
    done = threading.Event()

    def resolve(name: str) -> None:
        info = ServiceInfo(SERVICE_TYPE, name)
        if not info.request(zc, RESOLVE_MS):
            return
        addresses = info.parsed_addresses(IPVersion.V4Only)
        txt = {
            k.decode(): (v or b"").decode("utf-8", "replace")
            for k, v in (info.properties or {}).items()
        }
        seen = Seen(
            name, addresses[0] if addresses else "", info.port or 0, txt, time.monotonic() - start
        )
        with lock:
            found[name] = seen
            if expect is not None and len(found) >= expect:
                done.set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            threading.Thread(target=resolve, args=(name,), daemon=True).start()
        elif state_change is ServiceStateChange.Removed:
            with lock:
                found.pop(name, None)

    browser = ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
    try:
        done.wait(seconds)
    finally:
        browser.cancel()
        zc.close()
    with lock:
        return sorted(found.values(), key=lambda s: (s.txt.get("site", ""), s.id))
