"""Memory figures for ``tools/bench_lan_push.py``: a process's RSS and private (unshared) pages,
and the resident memory of the device's agent, against which the push's memory is judged.

The agent (``appliance agent``) runs on every device: it supervises the inference pipeline in a
worker process. The bench runs the real one, in the device's namespace and on its CPU, with the
shipped reference model (``recipes/models/inspect-primary``) on its reference images looped at 5
frames/s, and reads the RSS of the agent and its worker once results flow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tools.lan_link import descendants, pin_tree
from tools.lan_rig import REPO, Veth

MODEL = REPO / "recipes" / "models" / "inspect-primary"


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (KiB), 0 if it ended."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def uss_kib(pid: int) -> int:
    """Pages of ``pid`` that no other process maps (KiB): what it adds to the device's use."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(
        int(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("Private_Clean:", "Private_Dirty:"))
    )


def agent_rss(veth: Veth, root: Path, env: dict[str, str], cpu: int | None) -> dict[str, int]:
    """Run ``appliance agent`` with the reference model for a while; the peak RSS (KiB) of the
    agent, its worker, and both together, sampled for 5 s once 10 results were written."""
    root.mkdir(parents=True, exist_ok=True)
    results = root / "results.jsonl"
    source = f"npz:{MODEL / 'reference.npz'}?loop=1&fps=5"
    config = {"model": str(MODEL), "source": source, "sink": str(results)}
    (root / "pipeline.json").write_text(json.dumps({**config, "backends": ["onnxruntime"]}))
    (root / "data").mkdir(exist_ok=True)
    cmd = [
        "ip", "netns", "exec", veth.ns, sys.executable, "-m", "appliance.cli", "agent",
        f"--config={root / 'pipeline.json'}", f"--loader=file:{root / 'slots.env'}",
        "--booted=A", f"--data-dir={root / 'data'}", "--service=none",
    ]  # fmt: skip
    env = {k: v for k, v in env.items() if k != "NOTIFY_SOCKET"}
    with (root / "agent.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        while not results.exists() or len(results.read_bytes().splitlines()) < 10:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the agent wrote no results: {(root / 'agent.log').read_text()}"
                )
            if cpu is not None:
                pin_tree(proc.pid, {cpu})
            time.sleep(0.2)
        peak = {"agent": 0, "worker": 0, "both": 0}
        end = time.monotonic() + 5
        while time.monotonic() < end:
            tree = descendants(proc.pid)
            agent, workers = rss_kib(proc.pid), sum(rss_kib(p) for p in tree[1:])
            peak["agent"] = max(peak["agent"], agent)
            peak["worker"] = max(peak["worker"], workers)
            peak["both"] = max(peak["both"], agent + workers)
            time.sleep(0.05)
        return peak
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
