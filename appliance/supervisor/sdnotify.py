"""sd_notify(3) in a few lines: READY, WATCHDOG, STATUS, STOPPING over ``$NOTIFY_SOCKET``.

Without ``$NOTIFY_SOCKET`` (not started by systemd) every call is a no-op. The watchdog
interval comes from ``$WATCHDOG_USEC`` (only when ``$WATCHDOG_PID`` is unset or is us), and we
ping at half of it, as sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Send notifications to the service manager."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_s: float | None = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1_000_000
        self._sock: socket.socket | None = None

    @property
    def ping_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (None: no watchdog configured)."""
        return None if self.watchdog_s is None else self.watchdog_s / 2

    def send(self, message: str) -> bool:
        """Send one datagram; False when there is no socket or it failed (never raises)."""
        if not self.address:
            return False
        address = self.address
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
