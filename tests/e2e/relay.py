"""Relay one connection between stdin/stdout and a TCP port on the host's loopback.

QEMU's user-mode networking runs it for each connection the guest opens to a ``guestfwd``
address (``VmConfig.guest_commands``), so a fixed address inside the guest (the one baked
into the image's update channel URL) reaches a server the test started on a free port.

    python relay.py PORT
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def relay(port: int) -> None:
    """Copy bytes both ways until either side closes."""
    upstream = socket.create_connection(("127.0.0.1", port))
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "guest")
    sel.register(upstream, selectors.EVENT_READ, "host")
    while True:
        for key, _ in sel.select():
            if key.data == "guest":
                data = os.read(0, 1 << 16)
                if not data:
                    upstream.shutdown(socket.SHUT_WR)
                    sel.unregister(0)
                    continue
                upstream.sendall(data)
            else:
                data = upstream.recv(1 << 16)
                if not data:
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(1, view) :]


if __name__ == "__main__":
    relay(int(sys.argv[1]))
