"""A throwaway PostgreSQL cluster from the distribution's packages, on a unix socket in a temp dir.

PostgreSQL refuses to run as root, so as root the cluster belongs to ``nobody`` (runuser).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path("/usr/lib/postgresql/15/bin")


def _tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    if found is None:
        pytest.fail(f"{name} is not installed (tools/bootstrap.sh installs postgresql)")
    return found


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a cluster; yield its ``postgresql://`` URL; stop it and delete it."""
    root = Path(tempfile.mkdtemp(prefix="kiln-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "nobody", "nogroup")
        as_user = ["runuser", "-u", "nobody", "--"]
    root.chmod(0o755)
    db, log = root / "db", root / "log"

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"{args[0]} failed: {done.stderr or done.stdout}")

    run(_tool("initdb"), "-D", str(db), "-A", "trust", "-U", "fleet")
    run(
        _tool("pg_ctl"),
        "-D",
        str(db),
        "-o",
        f"-k {root} -c listen_addresses=''",
        "-l",
        str(log),
        "-w",
        "start",
    )
    try:
        yield f"postgresql://fleet@/postgres?host={root}"
    finally:
        run(_tool("pg_ctl"), "-D", str(db), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
