"""Profiles of the service under the benchmark's load, for docs/performance.md.

    python -m bench.profiling fanout      # py-spy on the server while a room of 100 is saturated
    python -m bench.profiling heartbeat   # py-spy on 10,000 idle connections (--ping 5 s)
    python -m bench.profiling memory      # tracemalloc: what each idle connection holds

The CPU modes need py-spy (`.venv/bin/pip install py-spy`; not a dependency of `make bench`).
Each writes the raw profile and a text summary (top frames by own and by total samples) to
bench/results/profiles/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from bench.kinds import SERVICE
from bench.loadgen import Health, Meter, Sink, blast, close_all, connect, quiet
from bench.measure import revision
from bench.scenarios.harness import Plan, target_of
from bench.scenarios.room import open_room
from bench.servers import Pinning, Service, raise_fd_limit

OUT = Path(__file__).resolve().parent / "results" / "profiles"

# Run inside the server process for `memory`: start tracemalloc before the app is imported,
# and write the top allocation sites (by line and by file) on SIGUSR1.
MEMORY_WRAPPER = """
import signal, sys, tracemalloc
depth, report = int(sys.argv[1]), sys.argv[2]
tracemalloc.start(depth)
baseline = None
def dump(signum, frame):
    global baseline
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    if baseline is None:
        baseline = snapshot
        open(report + ".ready", "w").close()
        return
    with open(report, "w") as out:
        for key in ("filename", "lineno"):
            stats = snapshot.compare_to(baseline, key)
            total = sum(s.size_diff for s in stats)
            out.write(f"== growth by {key}: {total / 1024:.0f} KiB in all ==\\n")
            for stat in stats[:40]:
                out.write(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:8d} blocks  "
                          f"{stat.traceback[0]}\\n")
        out.write("== biggest growth sites, with callers ==\\n")
        for stat in snapshot.compare_to(baseline, "traceback")[:15]:
            out.write(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:8d} blocks\\n")
            for line in stat.traceback.format()[-12:]:
                out.write("      " + line + "\\n")
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["app"]
from app.__main__ import main
sys.exit(main())
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summarize(raw: Path, top: int = 35) -> str:
    """Own and total sample counts per frame, from py-spy's collapsed-stack output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples", "", "== own time (the frame itself was running) =="]
    lines += [f"{n / samples:7.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "== total time (the frame was on the stack) =="]
    lines += [f"{n / samples:7.1%}  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines) + "\n"


def header(what: str) -> str:
    """Which code a profile is of: line numbers only mean something at that revision."""
    measured = revision()
    dirty = ", with uncommitted edits in app/" if measured["app_modified"] else ""
    return f"# python -m bench.profiling: {what}; commit {measured['commit']}{dirty}\n\n"


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is needed: .venv/bin/pip install py-spy")
    return found


def record(pid: int, seconds: float, name: str, pinning: Pinning) -> subprocess.Popen[bytes]:
    """Start py-spy on `pid` (on the load core, so it does not take the server's CPU)."""
    OUT.mkdir(parents=True, exist_ok=True)
    argv = [py_spy(), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", "250", "--nonblocking", "--format", "raw", "-o", str(OUT / f"{name}.txt")]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603
    if pinning.load:
        os.sched_setaffinity(process.pid, pinning.load)
    return process


def finish(process: subprocess.Popen[bytes], name: str) -> None:
    _, err = process.communicate(timeout=120)
    raw = OUT / f"{name}.txt"
    if not raw.exists():
        raise SystemExit(f"py-spy wrote nothing: {err.decode(errors='replace')}")
    summary = OUT / f"{name}-summary.txt"
    summary.write_text(
        header(f"py-spy record --rate 250 --nonblocking, {name}") + summarize(raw), encoding="utf-8"
    )
    log(f"profile: {raw}; summary: {summary}")


async def fanout(size: int, seconds: float, pinning: Pinning) -> None:
    server = Service(pinning)
    await asyncio.to_thread(server.start)
    room = None
    try:
        room = await open_room(SERVICE, server, size, "profile")
        await quiet(room.meter)
        spy = record(server.pid, seconds, f"fanout-{size}", pinning)
        deadline = time.monotonic() + seconds + 1
        sent = 0
        while time.monotonic() < deadline:
            _, n = await blast(room.sender, room.meter, 10_000, room.recipients, 256, 2.0)
            sent += n
        log(f"sent {sent:,} messages to a room of {size}")
        await asyncio.to_thread(finish, spy, f"fanout-{size}")
    finally:
        server.stop()
        if room:
            close_all(room.clients)


async def heartbeat(connections: int, seconds: float, ping: float, pinning: Pinning) -> None:
    wait = max(ping, 5.0)
    server = Service(pinning, {"WS_PING_INTERVAL": f"{ping:g}s", "WS_PONG_WAIT": f"{wait:g}s"})
    await asyncio.to_thread(server.start)
    clients = []
    try:
        meter, health = Meter(), Health()
        rooms = [f"hb-{i % 100}" for i in range(connections)]
        clients = await connect(
            target_of(SERVICE, server),
            rooms,
            [Sink(meter)] * connections,
            health,
            source_ips=Plan().source_ips,
        )
        await quiet(meter)
        await asyncio.sleep(6)
        name = f"heartbeat-{ping:g}s"
        before = server.cpu_seconds()
        spy = record(server.pid, seconds, name, pinning)
        await asyncio.to_thread(finish, spy, name)
        log(f"server CPU while sampled: {(server.cpu_seconds() - before) / seconds:.1%} of a core")
        log(f"{len(clients)} connections, {health.dropped} dropped")
    finally:
        server.stop()
        close_all(clients)


def wait_for_file(path: Path, remove: bool = False, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or (path.stat().st_size == 0 and not remove):
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.2)
    if remove:
        path.unlink()


async def memory(connections: int, pinning: Pinning) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    report = OUT / "memory.txt"
    server = Service(pinning)
    server._spawn(
        [sys.executable, "-c", MEMORY_WRAPPER, "10", str(report)], server.env, cwd=str(OUT)
    )
    clients = []
    try:
        await asyncio.to_thread(server.wait_ready, False, 300.0)
        target = target_of(SERVICE, server)
        meter, health = Meter(), Health()
        warm = await connect(target, ["warm"] * 20, [Sink(meter)] * 20, health, first_index=90_000)
        close_all(warm)
        await asyncio.sleep(1)
        assert server.process is not None
        server.process.send_signal(signal.SIGUSR1)
        await asyncio.to_thread(wait_for_file, Path(str(report) + ".ready"), remove=True)
        rooms = [f"idle-{i % 100}" for i in range(connections)]
        clients = await connect(target, rooms, [Sink(meter)] * connections, health)
        await quiet(meter)
        server.process.send_signal(signal.SIGUSR1)
        await asyncio.to_thread(wait_for_file, report)
        await asyncio.sleep(3)
        what = f"tracemalloc growth to {connections} idle connections"
        report.write_text(header(what) + report.read_text(encoding="utf-8"), encoding="utf-8")
        log(f"{len(clients)} connections; tracemalloc report: {report}")
    finally:
        server.stop()
        close_all(clients)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("fanout", "heartbeat", "memory"))
    parser.add_argument("--room", type=int, default=100, help="fanout: room size")
    parser.add_argument("--connections", type=int, help="heartbeat/memory: how many")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to sample")
    parser.add_argument("--ping", type=float, default=5.0, help="heartbeat: WS_PING_INTERVAL (s)")
    args = parser.parse_args(argv)
    pinning = Pinning()
    pinning.pin_load()
    raise_fd_limit(25_000)
    if args.mode == "fanout":
        uvloop.run(fanout(args.room, args.seconds, pinning))
    elif args.mode == "heartbeat":
        uvloop.run(heartbeat(args.connections or 10_000, args.seconds, args.ping, pinning))
    else:
        uvloop.run(memory(args.connections or 2_000, pinning))
    return 0


if __name__ == "__main__":
    sys.exit(main())
