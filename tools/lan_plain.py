"""The baseline of ``tools/bench_lan_push.py``: a plain HTTP PUT of the same file to a stdlib
``http.server`` that writes the body to a file and fsyncs it (no verification, no read-back);
HTTPS variants for the TLS figures."""

from __future__ import annotations

import http.client
import textwrap
import time
from pathlib import Path

from tools.lan_rig import Veth

PLAIN_SERVER = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    out = sys.argv[3]
    into = len(sys.argv) > 6 and sys.argv[6] == "recv_into"
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_PUT(self):
            left = int(self.headers["Content-Length"])
            with open(out, "wb") as f:
                if into:  # one reusable 1 MiB buffer, recv_into on the socket itself
                    view = memoryview(bytearray(1 << 20))
                    pending = self.rfile.peek(0)[: left] if hasattr(self.rfile, "peek") else b""
                    self.rfile.read(len(pending)); f.write(pending); left -= len(pending)
                    while left:
                        n = self.connection.recv_into(view, min(left, len(view)))
                        if not n: break
                        f.write(view[:n]); left -= n
                while left:
                    data = self.rfile.read(min(left, 1 << 20))
                    f.write(data)
                    left -= len(data)
                f.flush(); os.fsync(f.fileno())
            self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        def log_message(self, *a): pass
    server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
    if len(sys.argv) > 4 and sys.argv[4]:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[4], sys.argv[5])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
    """
)


def plain_put(
    veth: Veth,
    port: int,
    bundle: Path,
    tls: bool = False,
    cipher: str = "",
    path: str = "/x",
    token: str = "",
    sendfile: bool = False,
) -> float:
    """Seconds to PUT ``bundle`` to the plain server (HTTPS when ``tls``; TLS 1.2 ``cipher``):
    the body as ``http.client`` sends a file (1 MiB reads and ``sendall``, as curl or requests
    would), or by ``sendfile`` (page cache to socket, no copy: what ``kiln push`` does)."""
    if tls:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if cipher:  # Python 3.11 cannot choose TLS 1.3 suites: pin TLS 1.2 to pick the cipher
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers(cipher)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            veth.dev_addr, port, timeout=120, context=ctx
        )
    else:
        conn = http.client.HTTPConnection(veth.dev_addr, port, timeout=120)
    start = time.perf_counter()
    with bundle.open("rb") as handle:
        headers = {"Content-Length": str(bundle.stat().st_size)}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if sendfile and not tls:
            conn.putrequest("PUT", path)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            assert conn.sock is not None
            conn.sock.sendfile(handle)
        else:
            conn.blocksize = 1 << 20  # http.client sends a file body in 8 KiB writes by default
            conn.request("PUT", path, body=handle, headers=headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed
