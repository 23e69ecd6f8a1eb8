"""A stand-in for NVIDIA's ``nvbootctrl`` (rootfs A/B), and for what UEFI does at a boot.

NVIDIA's tool exists only on a Jetson. This script answers the ``-t rootfs`` commands the way
L4T R35/R36 documents them and keeps the slot variables (current, active, per slot
``retry_count`` and ``status``) in a JSON file named by ``$FAKE_NVBOOTCTRL_STATE``; every call
is appended to ``$FAKE_NVBOOTCTRL_LOG``. :func:`boot` plays UEFI's part: boot the active slot
unless it is unbootable, count its retries down, and after the last failed boot mark it
unbootable and switch to the other slot. It is a stand-in at the outermost edge: the back end
under test (appliance/slots/nvbootctrl.py) runs unchanged against it.

Run as a program (``install(bindir)`` writes the ``nvbootctrl`` wrapper that does).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

MAX_RETRY = 3  # L4T's default rootfs retry count
USAGE = "Usage: nvbootctrl [-t <target>] <command> [<parameters>]\n"


def fresh() -> dict[str, Any]:
    """A device flashed with ROOTFS_AB=1: slot A current and active, both slots normal."""
    slot = {"retry_count": MAX_RETRY, "status": "normal"}
    return {"current": 0, "active": 0, "slots": [dict(slot), dict(slot)]}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else fresh()


def save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def boot(path: Path, *, fails: bool = False) -> int:
    """One power-on as UEFI does it; returns the rootfs slot that was booted (0 or 1).

    ``fails``: the kernel or userspace of that slot never gets to confirm the boot (panic,
    hang, watchdog): its retry count is spent; at 0 the slot is unbootable and the other
    slot becomes active.
    """
    state = load(path)
    slot = state["active"]
    if state["slots"][slot]["status"] == "unbootable":
        slot = 1 - slot
        state["active"] = slot
    info = state["slots"][slot]
    info["retry_count"] -= 1
    state["current"] = slot
    if fails and info["retry_count"] <= 0:
        info["retry_count"], info["status"] = 0, "unbootable"
        state["active"] = 1 - slot
    save(path, state)
    return int(slot)


def dump(state: dict[str, Any]) -> str:
    """``nvbootctrl -t rootfs dump-slots-info`` as L4T prints it."""
    letter = "AB"
    lines = [
        f"Current rootfs slot: {letter[state['current']]}",
        f"Active rootfs slot: {letter[state['active']]}",
        "num_slots: 2",
    ]
    for n, s in enumerate(state["slots"]):
        lines.append(
            f"slot: {n},             retry_count: {s['retry_count']},             "
            f"status: {s['status']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    path = Path(os.environ["FAKE_NVBOOTCTRL_STATE"])
    with open(os.environ["FAKE_NVBOOTCTRL_LOG"], "a") as log:
        log.write(" ".join(argv) + "\n")
    args = list(argv)
    if args[:2] != ["-t", "rootfs"] or len(args) < 3:
        sys.stderr.write(USAGE)
        return 1
    cmd, params = args[2], args[3:]
    state = load(path)
    if cmd == "get-current-slot" and not params:
        print(state["current"])
        return 0
    if cmd == "dump-slots-info" and not params:
        sys.stdout.write(dump(state))
        return 0
    if cmd == "mark-boot-successful" and not params:
        state["slots"][state["current"]]["retry_count"] = MAX_RETRY
        save(path, state)
        return 0
    if cmd in ("set-active-boot-slot", "set-slot-as-unbootable") and len(params) == 1:
        if params[0] not in ("0", "1"):
            sys.stderr.write(f"Invalid slot number: {params[0]}\n")
            return 1
        slot = int(params[0])
        if cmd == "set-active-boot-slot":
            state["active"] = slot
            state["slots"][slot] = {"retry_count": MAX_RETRY, "status": "normal"}
        else:
            state["slots"][slot] = {"retry_count": 0, "status": "unbootable"}
        save(path, state)
        return 0
    sys.stderr.write(USAGE)
    return 1


def install(bindir: Path) -> Path:
    """Write an ``nvbootctrl`` executable into ``bindir`` that runs this module."""
    bindir.mkdir(parents=True, exist_ok=True)
    exe = bindir / "nvbootctrl"
    exe.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import fake_nvbootctrl\nsys.exit(fake_nvbootctrl.main(sys.argv[1:]))\n"
    )
    exe.chmod(0o755)
    return exe


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
