"""Small measurement helpers: percentiles, CPU windows, the machine description."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.servers import Process, redis_binary

LIBRARIES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "websockets",
    "uvloop",
    "httptools",
    "pydantic",
    "pydantic-core",
    "redis",
    "python-jose",
    "prometheus-client",
    "pycrdt",
)


def percentile(sorted_values: list[int] | list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (nan when empty)."""
    if not sorted_values:
        return float("nan")
    rank = min(max(1, math.ceil(fraction * len(sorted_values))), len(sorted_values))
    return float(sorted_values[rank - 1])


def latency_ms(samples_ns: Iterable[int]) -> dict[str, float | int]:
    values = sorted(samples_ns)
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.50) / 1e6, 4),
        "p90": round(percentile(values, 0.90) / 1e6, 4),
        "p99": round(percentile(values, 0.99) / 1e6, 4),
        "max": round(values[-1] / 1e6, 4) if values else float("nan"),
    }


def core_times() -> dict[str, tuple[int, int, int]]:
    """Per-core (busy, steal, total) jiffies from /proc/stat."""
    cores: dict[str, tuple[int, int, int]] = {}
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *raw = line.split()
            values = [int(value) for value in raw]
            idle = values[3] + values[4]
            steal = values[7] if len(values) > 7 else 0
            total = sum(values[:8])
            cores[name] = (total - idle - steal, steal, total)
    return cores


@dataclass
class Window:
    """CPU use over a stretch of wall time: per process (% of one core) and per core."""

    started: float
    processes: dict[str, tuple[Process, float]]
    load: float
    cores: dict[str, tuple[int, int, int]]
    server_core: int | None

    @classmethod
    def open(cls, processes: dict[str, Process], server_core: int | None = None) -> Window:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            server_core=server_core,
            started=time.monotonic(),
            processes={name: (p, p.cpu_seconds()) for name, p in processes.items()},
            load=usage.ru_utime + usage.ru_stime,
            cores=core_times(),
        )

    def close(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result: dict[str, float] = {"seconds": round(elapsed, 3)}
        ours = 0.0
        for name, (process, before) in self.processes.items():
            share = (process.cpu_seconds() - before) / elapsed * 100
            ours += share
            result[f"{name}_cpu_pct"] = round(share, 1)
        result["loadgen_cpu_pct"] = round(
            (usage.ru_utime + usage.ru_stime - self.load) / elapsed * 100, 1
        )
        after = core_times()
        for core, (busy, steal, total) in after.items():
            b0, s0, t0 = self.cores.get(core, (0, 0, 0))
            span = max(total - t0, 1)
            result[f"{core}_busy_pct"] = round((busy - b0) / span * 100, 1)
            if steal - s0:
                result[f"{core}_steal_pct"] = round((steal - s0) / span * 100, 1)
        if self.server_core is not None:
            # CPU time on the server core that none of the measured processes used: other
            # work on the machine competing with the server (noise).
            core_busy = result.get(f"cpu{self.server_core}_busy_pct")
            if core_busy is not None:
                result["server_core_other_pct"] = round(max(0.0, core_busy - ours), 1)
        return result


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return float("nan")


def _redis_version() -> str:
    binary = redis_binary()
    if binary is None:
        return "not installed"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(  # noqa: S603 - the redis-server binary, one fixed flag
            [binary, "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
        return out.strip()
    return "unknown"


def revision() -> dict[str, object]:
    """The commit measured, and whether app/ differed from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(  # noqa: S603 - git, fixed arguments
                ["git", "-C", str(root), *args],  # noqa: S607 - git from PATH
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "app_modified": bool(git("status", "--porcelain", "--", "app")),
    }


def machine() -> dict[str, object]:
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "libraries": versions,
        "redis_server": _redis_version(),
        "loadavg_at_start": list(os.getloadavg()),
    }
