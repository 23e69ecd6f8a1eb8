"""Where a new pairing code is shown: the journal (log) and the device's console."""

from __future__ import annotations

import contextlib
import logging
import os
import pty
import re
import threading
import time
from pathlib import Path

import pytest

from appliance.api.auth import new_pair_code, show_on_console, take_pair_code


def _sysfs(root: Path, active: str, vt: str = "tty1") -> Path:
    (root / "console").mkdir(parents=True)
    (root / "console" / "active").write_text(active + "\n")
    (root / "tty0").mkdir()
    (root / "tty0" / "active").write_text(vt + "\n")
    return root


def test_code_goes_to_the_console_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    console = tmp_path / "console"
    console.touch()
    sysfs = _sysfs(tmp_path / "sys", "tty0 ttyS0")
    with caplog.at_level(logging.WARNING, logger="appliance.api.auth"):
        code = new_pair_code(tmp_path / "api", console=console, sysfs=sysfs)
    shown = re.findall(
        r"edgekiln: LAN pairing code: (\d{8}) \(valid 300 s, once\)", console.read_text()
    )
    assert shown == [code]
    assert f"LAN pairing code: {code}" in caplog.text
    assert take_pair_code(tmp_path / "api", code)


def test_no_console_is_not_an_error(tmp_path: Path) -> None:
    assert not show_on_console("x", tmp_path / "missing", tmp_path / "sys")
    code = new_pair_code(tmp_path / "api", console=tmp_path / "missing")
    assert take_pair_code(tmp_path / "api", code)


def test_not_written_over_the_tui_on_the_consoles_own_terminal(tmp_path: Path) -> None:
    """When stdin is the terminal /dev/console writes to (the TUI on the console's VT), the
    code is not written there (the Pair screen shows it)."""
    leader, follower = pty.openpty()
    name = Path(os.ttyname(follower)).relative_to("/dev").as_posix()
    console = tmp_path / "console"
    console.touch()
    saved = os.dup(0)
    os.dup2(follower, 0)
    try:
        assert not show_on_console("on the TUI", console, _sysfs(tmp_path / "a", f"ttyS0 {name}"))
        # the console's last entry is the foreground VT (tty0), and that VT is this terminal
        assert not show_on_console("on the TUI", console, _sysfs(tmp_path / "b", "tty0", name))
        # a console elsewhere (the serial port) still gets it
        assert show_on_console("to the serial port", console, _sysfs(tmp_path / "c", "ttyS0"))
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(leader)
        os.close(follower)
    assert console.read_text().strip() == "to the serial port"


def _full_fifo(path: Path) -> tuple[int, int]:
    """A FIFO at ``path`` whose buffer is full: (read end, a writer that keeps it open)."""
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(writer, b"." * 4096)
    return reader, writer


def _drain(fd: int, out: bytearray, until: float) -> None:
    while time.monotonic() < until:
        with contextlib.suppress(BlockingIOError):
            out += os.read(fd, 65536)
        time.sleep(0.01)


def test_a_full_console_buffer_delays_the_line_and_loses_none_of_it(tmp_path: Path) -> None:
    """CI's QEMU guest lost the code: /dev/console is opened non-blocking and its buffer was
    full of boot messages, so the write failed (EAGAIN) and the line never reached the serial
    port. It now waits (bounded) for room and writes every byte."""
    console = tmp_path / "console"
    reader, writer = _full_fifo(console)
    got = bytearray()
    drain = threading.Timer(0.3, _drain, (reader, got, time.monotonic() + 3.0))
    drain.start()
    try:
        code = new_pair_code(tmp_path / "api", console=console, sysfs=tmp_path / "sys")
    finally:
        drain.join()
        os.close(writer)
        os.close(reader)
    assert re.findall(rb"edgekiln: LAN pairing code: (\d{8}) ", bytes(got)) == [code.encode()]


def test_a_console_that_stays_full_gives_up_in_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    console = tmp_path / "console"
    reader, writer = _full_fifo(console)
    try:
        with caplog.at_level(logging.WARNING, logger="appliance.api.auth"):
            assert not show_on_console("never read", console, tmp_path / "sys", wait_s=0.3)
    finally:
        os.close(writer)
        os.close(reader)
    assert "its output stayed full" in caplog.text
