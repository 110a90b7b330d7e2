"""Memory after a connection flood: does the service give back what a burst of connections took?

    python -m bench.flood                        # 2,000 connections, two floods, one server
    python -m bench.flood --repeat 3             # three fresh servers, to see the noise
    python -m bench.flood --env MEMORY_RECLAIM_INTERVAL=0        # without the reclaimer
    python -m bench.flood --inspect              # and look inside: gc, pymalloc, glibc malloc
    python -m bench.flood --inspect --after-flood collect,typecache,trim,arenas

A fresh service (`python -m app` with the benchmark's settings, bench.servers.Service) is
warmed up with 20 connections that join, send and leave; its VmRSS once they are gone and it
has settled is the baseline. A flood then opens N connections over R projects (each waits for
its `presence_state`), each sends a cursor update and a ping, every announcement, relay and
pong is drained, and all leave at once (`--close`: half with a close frame, half by dropping
the TCP connection). VmRSS is read with all of them open (the peak), as soon as `/stats`
counts no connection, and once it has settled: unchanged within 64 KiB for `--settle`
seconds (6 s by default, three of the reclaimer's checks). More floods follow on the same
server: memory that is held comes back to the same level, memory that leaks grows.

With --inspect the server runs under bench.probe, which reports at each point what gc,
pymalloc and glibc's malloc hold, runs the probe commands given (`--after-flood`,
`--at-peak`), and at the end shows what a full collection and malloc_trim(0) still give back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop

from app.admission.auth import issue_token
from bench.loadgen import Client, Health, Meter, Sink, close_all, connect, quiet
from bench.measure import machine, revision
from bench.scenarios import SERVICE, require, target_of
from bench.servers import SECRET, Pinning, Service, raise_fd_limit

WARM_UP = 20
SETTLED_WITHIN_KIB = 64
STATS_TOKEN = issue_token(SECRET, user_id="flood-observer", username="observer", ttl=3600)
CURSOR = b'{"type":"cursor_update","payload":{"line":1,"column":2}}'
PING = b'{"type":"ping","payload":{"sent_at":1}}'
# The service reclaims at most every 60 s by default: a flood that follows within a minute
# would be measured before its reclaim. MEMORY_RECLAIM_INTERVAL=0 measures without reclaims.
DEFAULT_ENV = {"MEMORY_RECLAIM_INTERVAL": "5s"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(server: Service) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/stats",
        headers={"Authorization": f"Bearer {STATS_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own server
        body: dict[str, Any] = json.loads(response.read())
        return body


async def until_empty(server: Service, within: float = 60.0) -> float:
    """Poll /stats until the server counts no connection and no room; returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        body = await asyncio.to_thread(stats, server)
        if body["total_clients"] == 0 and body["total_rooms"] == 0:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise RuntimeError(f"connections still open after {within}s: {body}")


async def settled_rss(server: Service, quiet_for: float, limit: float = 30.0) -> int:
    """VmRSS once it has stayed within SETTLED_WITHIN_KIB for `quiet_for` seconds."""
    started = time.monotonic()
    last = server.rss_kib()
    since = time.monotonic()
    while time.monotonic() - started < limit:
        await asyncio.sleep(0.1)
        now = server.rss_kib()
        if abs(now - last) > SETTLED_WITHIN_KIB:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            break
    return server.rss_kib()


class Probe:
    """Talks to bench.probe inside the server: a command file, SIGUSR1, a report file."""

    def __init__(self, server: Service, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.count = 0

    async def ask(self, *commands: str) -> list[dict[str, Any]]:
        (self.directory / "command").write_text("\n".join(commands), encoding="ascii")
        self.count += 1
        path = self.directory / f"report-{self.count}.json"
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline or not self.server.alive():
                raise RuntimeError(f"the probe did not answer:\n{self.server.output()}")
            await asyncio.sleep(0.05)
        result: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return result


def leave(clients: list[Client], how: str) -> None:
    """Close every client: `abort` drops the TCP connection (a lost network), `frame` sends a
    close frame and lets the server end it (a closed tab), `mixed` alternates the two."""
    for index, client in enumerate(clients):
        if how == "abort" or (how == "mixed" and index % 2):
            client.close()
        else:
            client.closing = True
            client.send_frame(0x8, (1000).to_bytes(2, "big"))


async def one_flood(
    server: Service,
    connections: int,
    rooms: int,
    first_index: int,
    prefix: str,
    how: str,
    settle: float,
    probe: Probe | None = None,
    at_peak: tuple[str, ...] = (),
) -> dict[str, Any]:
    target = target_of(SERVICE, server)
    meter, health = Meter(), Health()
    sink = Sink(meter)
    names = [f"{prefix}-{index % rooms}" for index in range(connections)]
    cpu = server.cpu_seconds()
    started = time.monotonic()
    clients: list[Client] = await connect(
        target, names, [sink] * connections, health, first_index=first_index
    )
    try:
        require(clients, connections, health, prefix)
        opened = time.monotonic() - started
        await quiet(meter)
        for client in clients:
            client.send_text(CURSOR)
            client.send_text(PING)
        await quiet(meter)
        peak = server.rss_kib()
        if probe is not None and at_peak:
            steps = await probe.ask(*at_peak)
            for step in steps:
                log(f"with {len(clients)} connections open, {step['command']}: {step['seconds']} s")
    except BaseException:
        close_all(clients)
        raise
    leave(clients, how)
    waited = await until_empty(server)
    cpu = server.cpu_seconds() - cpu
    close_all(clients)  # those the server closed are closed already
    at_zero = server.rss_kib()
    settled = await settled_rss(server, settle)
    return {
        "connections": len(clients),
        "open_seconds": round(opened, 2),
        "messages_received": meter.received,
        "rss_peak_kib": peak,
        "rss_at_zero_kib": at_zero,
        "rss_settled_kib": settled,
        "close_seconds": round(waited, 2),
        # The server's CPU from the first connect until /stats counted none: the handshakes,
        # joins, relays and closes of the flood, before any reclaim.
        "cpu_seconds": round(cpu, 3),
    }


async def run_once(args: argparse.Namespace, pinning: Pinning, run: int) -> dict[str, Any]:
    env = {**DEFAULT_ENV, **dict(item.split("=", 1) for item in args.env)}
    probe_dir = tempfile.TemporaryDirectory(prefix="bench-probe-")
    server = Service(pinning, env)
    if args.inspect:
        server.argv = [sys.executable, "-m", "bench.probe", probe_dir.name]
        if args.tracemalloc:
            server.env["FLOOD_TRACEMALLOC"] = str(args.tracemalloc)
    await asyncio.to_thread(server.start)
    probe = Probe(server, Path(probe_dir.name)) if args.inspect else None
    result: dict[str, Any] = {"run": run, "env": env, "inspect": {}}
    try:
        result["rss_started_kib"] = server.rss_kib()
        warm = await one_flood(server, WARM_UP, 5, 900_000, "warm", args.close, args.settle)
        result["baseline_kib"] = warm["rss_settled_kib"]
        if probe:
            result["inspect"]["baseline"] = await probe.ask("report", "snapshot", "arenas")
        floods = []
        for flood in range(args.floods):
            outcome = await one_flood(
                server,
                args.connections,
                args.rooms,
                flood * 100_000,
                "flood",
                args.close,
                args.settle,
                probe,
                tuple(c for c in args.at_peak.split(",") if c),
            )
            floods.append(outcome)
            base = result["baseline_kib"]
            log(
                f"run {run} flood {flood + 1}: baseline {base / 1024:.1f} MiB, "
                f"peak {outcome['rss_peak_kib'] / 1024:.1f}, "
                f"at 0 connections {outcome['rss_at_zero_kib'] / 1024:.1f}, "
                f"settled {outcome['rss_settled_kib'] / 1024:.1f} MiB "
                f"({(outcome['rss_settled_kib'] / base - 1) * 100:+.1f}% of baseline); "
                f"server CPU {outcome['cpu_seconds']:.2f} s"
            )
            if probe:
                commands = ["report", "traced"] if args.tracemalloc else ["report"]
                commands += [c for c in args.after_flood.split(",") if c]
                steps = await probe.ask(*commands)
                result["inspect"][f"flood{flood + 1}"] = steps
                outcome["rss_after_probe_kib"] = server.rss_kib()
                for step in steps:
                    if "rss_after_kib" in step:
                        log(
                            f"run {run} flood {flood + 1} {step['command']}: "
                            f"{step['rss_before_kib'] / 1024:.1f} -> "
                            f"{step['rss_after_kib'] / 1024:.1f} MiB "
                            f"({(step['rss_after_kib'] / base - 1) * 100:+.1f}% of baseline)"
                        )
        result["floods"] = floods
        if probe:
            end = ["collect", "report", "trim", "report"]
            if args.tracemalloc:
                end.append("traced")
            result["inspect"]["end"] = await probe.ask(*end)
            for step in result["inspect"]["end"]:
                if "rss_after_kib" in step:
                    log(
                        f"run {run} {step['command']}: {step['rss_before_kib'] / 1024:.1f} -> "
                        f"{step['rss_after_kib'] / 1024:.1f} MiB"
                    )
        return result
    finally:
        server.stop()
        probe_dir.cleanup()


def summary(runs: list[dict[str, Any]]) -> str:
    floods = max(len(run["floods"]) for run in runs)
    titles = "  ".join(f"flood {i + 1}: peak / settled        " for i in range(floods))
    lines = [f"run  baseline    {titles}"]
    growth: dict[int, list[float]] = {}
    for run in runs:
        base = run["baseline_kib"]
        cells = [f"{run['run']:3}  {base / 1024:6.1f} MiB"]
        for index, flood in enumerate(run["floods"]):
            pct = (flood["rss_settled_kib"] / base - 1) * 100
            growth.setdefault(index, []).append(pct)
            cells.append(
                f"{flood['rss_peak_kib'] / 1024:6.1f} / {flood['rss_settled_kib'] / 1024:6.1f} MiB "
                f"({pct:+5.1f}%)"
            )
        lines.append("  ".join(cells))
    for index, values in growth.items():
        spread = f"{min(values):+.1f}..{max(values):+.1f}%"
        median = statistics.median(values)
        lines.append(
            f"flood {index + 1}: settled RSS over baseline, median {median:+.1f}% ({spread})"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, pinning: Pinning) -> list[dict[str, Any]]:
    return [await run_once(args, pinning, run + 1) for run in range(args.repeat)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flood",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--floods", type=int, default=2)
    parser.add_argument(
        "--close",
        choices=("mixed", "frame", "abort"),
        default="mixed",
        help="how clients leave: a close frame, a dropped connection, or half of each",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=6.0,
        help="seconds VmRSS must stay unchanged to count as settled (the server checks for a "
        "drop every 2 s)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="fresh servers, one after another")
    parser.add_argument("--inspect", action="store_true", help="run the server under bench.probe")
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="with --inspect: tracemalloc frames (0: off)"
    )
    parser.add_argument(
        "--after-flood",
        default="",
        help="with --inspect: probe commands after each flood, e.g. collect,trim",
    )
    parser.add_argument(
        "--at-peak", default="", help="with --inspect: probe commands while every client is open"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    pinning = Pinning()
    pinning.pin_load()
    raise_fd_limit(args.connections * 2 + 1000)
    described = machine()
    runs = uvloop.run(main_async(args, pinning))
    print(summary(runs))
    if args.out:
        settings = vars(args) | {"out": args.out.name}
        document = {"revision": revision(), "machine": described, "settings": settings}
        args.out.write_text(json.dumps(document | {"runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
