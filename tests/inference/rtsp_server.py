"""A real RTSP server for the tests: Debian's GStreamer RTSP server, run by the SYSTEM python3.

``/usr/bin/python3 tests/inference/rtsp_server.py --codec h264 --size 640x480`` serves a
``videotestsrc`` stream (SMPTE bars) at ``rtsp://127.0.0.1:PORT/cam``: x264 → ``rtph264pay``;
``--codec jpeg`` serves RTP/JPEG instead, a stream our reader must refuse clearly. It binds
port 0 (or ``--port``) and prints ``PORT <n>`` on stdout once it listens. ``--user`` and
``--password`` require authentication (``--auth basic`` or ``digest``); ``--session-timeout N``
announces a short session timeout. The GObject bindings (``gi``) exist only for the system
interpreter, so the tests start this file as a child process (:class:`RtspServer`).

Packages: gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly (x264enc), all in tools/bootstrap.sh.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import IO, Any

SYSTEM_PYTHON = "/usr/bin/python3"


def _serve(args: argparse.Namespace) -> None:  # pragma: no cover - runs in the child
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtsp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

    Gst.init(None)
    width, height = (int(v) for v in args.size.split("x"))
    raw = (
        f"videotestsrc is-live=true pattern={args.pattern} horizontal-speed={args.motion} ! "
        f"video/x-raw,width={width},height={height},framerate={args.fps}/1,format=I420"
    )
    if args.codec == "h264":
        enc = (
            f"x264enc {'' if args.bframes else 'tune=zerolatency '}speed-preset=ultrafast "
            f"bitrate={args.bitrate} bframes={args.bframes} "
            f"key-int-max={args.gop} ! video/x-h264,profile={args.profile} ! "
            f"rtph264pay name=pay0 pt=96 config-interval=-1 mtu={args.mtu}"
        )
    else:
        enc = "jpegenc ! rtpjpegpay name=pay0 pt=26"
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {raw} ! {enc} )")
    factory.set_shared(True)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "user")
        if args.auth == "digest":
            auth.add_digest(args.user, args.password, token)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_permission_for_role("user", "media.factory.access", True)
        perms.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(perms)
    if args.session_timeout:
        server.connect(
            "client-connected",
            lambda _srv, client: client.connect(
                "new-session", lambda _c, session: session.set_timeout(args.session_timeout)
            ),
        )
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print(f"PORT {server.get_bound_port()}", flush=True)
    GLib.MainLoop().run()


class RtspServer:
    """The server above as a child process; ``url`` once it listens, ``stop()`` kills it."""

    def __init__(self, *args: str) -> None:
        if not Path(SYSTEM_PYTHON).exists():
            raise RuntimeError(f"{SYSTEM_PYTHON} is missing (python3-gi needs the system python)")
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            err = self.proc.communicate(timeout=10)[1]
            raise RuntimeError(f"the GStreamer RTSP server did not start: {line!r} {err[-2000:]}")
        self.port = int(line.split()[1])

    def url(self, path: str = "/cam", userinfo: str = "") -> str:
        return f"rtsp://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)

    def __enter__(self) -> RtspServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - runs in the child
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0, help="0: a free one")
    parser.add_argument("--codec", choices=("h264", "jpeg"), default="h264")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--gop", type=int, default=15)
    parser.add_argument("--mtu", type=int, default=1400)
    parser.add_argument("--pattern", default="smpte")
    parser.add_argument("--motion", type=int, default=0, help="pixels the pattern moves a frame")
    parser.add_argument("--profile", default="baseline", help="H.264 profile: baseline, main, high")
    parser.add_argument("--bframes", type=int, default=0, help="B-frames (not zerolatency)")
    parser.add_argument("--bitrate", type=int, default=2000, help="kbit/s")
    parser.add_argument("--user", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--session-timeout", type=int, default=0)
    parser.add_argument("--auth", choices=("basic", "digest"), default="basic")
    _serve(parser.parse_args())


if __name__ == "__main__":
    main()
