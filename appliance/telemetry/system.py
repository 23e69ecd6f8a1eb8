"""System metrics for a window: CPU, temperature, memory, data partition, uptime.

Read from ``/proc`` and ``/sys`` (the root is a parameter so tests can point at a copy).
Temperatures come from ``/sys/class/thermal/thermal_zone*/temp`` and
``/sys/class/hwmon/hwmon*/temp*_input`` (millidegrees); a machine without either (many VMs)
reports ``temp_c: {}`` and a ``temp_note`` saying so, never a made-up value.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def temperatures(sys_root: Path = Path("/sys")) -> dict[str, float]:
    """Every readable temperature sensor in degrees Celsius, keyed ``zone:...`` / ``hwmon:...``."""
    out: dict[str, float] = {}
    for zone in sorted((sys_root / "class/thermal").glob("thermal_zone*")):
        raw, kind = _read(zone / "temp"), _read(zone / "type") or zone.name
        if raw is not None and raw.lstrip("-").isdigit():
            out[f"zone:{kind}:{zone.name[12:]}"] = int(raw) / 1000.0
    for hw in sorted((sys_root / "class/hwmon").glob("hwmon*")):
        name = _read(hw / "name") or hw.name
        for sensor in sorted(hw.glob("temp*_input")):
            raw = _read(sensor)
            if raw is not None and raw.lstrip("-").isdigit():
                out[f"hwmon:{name}:{sensor.name.removesuffix('_input')}"] = int(raw) / 1000.0
    return out


def _cpu_times(proc_root: Path) -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    line = (_read(proc_root / "stat") or "").split("\n", 1)[0].split()
    if not line or line[0] != "cpu":
        return None
    values = [float(v) for v in line[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


def memory(proc_root: Path = Path("/proc")) -> dict[str, float]:
    """Used and available memory in MiB from /proc/meminfo."""
    info: dict[str, float] = {}
    for line in (_read(proc_root / "meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            info[key] = float(parts[0]) / 1024.0
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    if total is None or available is None:
        return {}
    return {"mem_used_mb": round(total - available, 1), "mem_available_mb": round(available, 1)}


@dataclass
class SystemSampler:
    """Samples the machine once per window; CPU % is over the time since the last sample."""

    data_dir: Path = Path("/data")
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    _last_cpu: tuple[float, float] | None = None
    _last_proc: tuple[float, float] = field(default_factory=lambda: (0.0, 0.0))

    def __post_init__(self) -> None:
        self._last_cpu = _cpu_times(self.proc_root)
        t = os.times()
        self._last_proc = (t.user + t.system, time.monotonic())

    def sample(self) -> dict[str, object]:
        out: dict[str, object] = {}
        now = _cpu_times(self.proc_root)
        if now is not None and self._last_cpu is not None and now[1] > self._last_cpu[1]:
            busy = now[0] - self._last_cpu[0]
            out["cpu_pct"] = round(100.0 * busy / (now[1] - self._last_cpu[1]), 1)
        self._last_cpu = now
        t, mono = os.times(), time.monotonic()
        used, last_mono = t.user + t.system, self._last_proc[1]
        if mono > last_mono:
            out["proc_cpu_pct"] = round(100.0 * (used - self._last_proc[0]) / (mono - last_mono), 1)
        self._last_proc = (used, mono)
        temps = temperatures(self.sys_root)
        out["temp_c"] = {k: round(v, 1) for k, v in temps.items()}
        if temps:
            out["temp_max_c"] = round(max(temps.values()), 1)
        else:
            out["temp_note"] = "no thermal zone or hwmon temperature sensor on this machine"
        out.update(memory(self.proc_root))
        try:
            st = os.statvfs(self.data_dir)
        except OSError:
            out["data_note"] = f"{self.data_dir}: not mounted or not readable"
        else:
            total = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            out["data_used_pct"] = round(100.0 * (total - free) / total, 1) if total else None
            out["data_free_mb"] = round(free / (1 << 20), 1)
        uptime = (_read(self.proc_root / "uptime") or "").split()
        if uptime:
            out["uptime_s"] = round(float(uptime[0]))
        return out
