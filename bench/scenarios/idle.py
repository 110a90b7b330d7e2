"""D. Many connections: each server holds many idle connections, from a holder process of its
own, under the production heartbeat and then under a fast one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

from bench.holder import HoldSpec, spec_json
from bench.kinds import KINDS, REFERENCE, SERVICE
from bench.measure import Window
from bench.scenarios.harness import BenchError, Log, Outcome, Plan, Row, start, verdict
from bench.servers import ROOT, Pinning, Process


class Holder:
    """A `bench.holder` child process keeping `plan.many` connections open to one server."""

    def __init__(self, kind: str, server: Process, process: asyncio.subprocess.Process) -> None:
        self.kind = kind
        self.server = server
        self.process = process
        self.ready: dict[str, Any] = {}

    @classmethod
    async def open(cls, kind: str, server: Process, plan: Plan, log: Log) -> Holder:
        spec = HoldSpec(kind, server.port, plan.many, plan.many_rooms, plan.source_ips)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.holder",
            spec_json(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        holder = cls(kind, server, process)
        holder.ready = await holder._read(600.0)
        log(
            f"D {kind:9}: {holder.ready['connected']:,} connections open in "
            f"{holder.ready['connect_seconds']:.1f}s ({holder.ready['failed']} failed), "
            f"RSS {server.rss_kib() / 1024:.0f} MiB"
        )
        return holder

    async def _read(self, within: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), within)
        if not line:
            raise BenchError(f"D {self.kind}: the holder process exited")
        message: dict[str, Any] = json.loads(line)
        return message

    async def report(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"report\n")
        await self.process.stdin.drain()
        return await self._read(30.0)

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.write(b"exit\n")
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def hold_phase(
    plan: Plan, pinning: Pinning, log: Log, seconds: float, ping: tuple[float, float]
) -> dict[str, Any]:
    """Both servers up, each with `plan.many` connections from its own holder process, held
    for the same `seconds`: drops, CPU, and pings answered."""
    servers: dict[str, Process] = {}
    holders: list[Holder] = []
    try:
        for kind in KINDS:
            servers[kind] = await start(kind, pinning, plan, ping=ping)
            holders.append(await Holder.open(kind, servers[kind], plan, log))
        before = {h.kind: await h.report() for h in holders}
        cpu = Window.open(servers, pinning.server_core)
        started = time.monotonic()
        while (left := seconds - (time.monotonic() - started)) > 0.01:
            await asyncio.sleep(min(30.0, left))
            now = {h.kind: await h.report() for h in holders}
            text = ", ".join(
                f"{kind} {now[kind]['open']:,} open / "
                f"{now[kind]['dropped'] - before[kind]['dropped']} dropped"
                for kind in now
            )
            log(f"D held {time.monotonic() - started:4.0f}s of {seconds:.0f}s: {text}")
        usage = cpu.close()
        after = {h.kind: await h.report() for h in holders}
        elapsed = usage["seconds"]
        results: dict[str, Any] = {
            "ping_interval_s": ping[0],
            "pong_wait_s": ping[1],
            "hold_s": seconds,
            "window": usage,
        }
        for h in holders:
            answered = after[h.kind]["pings_answered"] - before[h.kind]["pings_answered"]
            cpu_pct = usage[f"{h.kind}_cpu_pct"]
            results[h.kind] = {
                "connections": h.ready["connected"],
                "connect_failures": h.ready["failed"],
                "connect_failure_reasons": h.ready["failures"],
                "connect_seconds": h.ready["connect_seconds"],
                "dropped": after[h.kind]["dropped"] - before[h.kind]["dropped"],
                "still_open": after[h.kind]["open"],
                "close_codes": after[h.kind]["close_codes"],
                "pings_answered": answered,
                "pings_answered_per_s": round(answered / elapsed, 1),
                "cpu_pct": cpu_pct,
                "cpu_us_per_ping": (
                    round(cpu_pct / 100 * elapsed / answered * 1e6, 1) if answered else None
                ),
                "rss_mib": round(h.server.rss_kib() / 1024, 1) if h.server.alive() else None,
                "alive": h.server.alive(),
            }
        return results
    finally:
        for server in servers.values():
            server.stop()
        for holder in holders:
            await holder.close()


def lost(result: dict[str, Any], n: int) -> int:
    """Connections that did not last: dropped during the hold, or never opened."""
    return int(result["dropped"]) + (n - int(result["connections"]))


async def scenario_d(plan: Plan, pinning: Pinning, log: Log) -> Outcome:
    outcome = Outcome()
    n = plan.many
    production = await hold_phase(
        plan, pinning, log, plan.hold_seconds, (plan.ping_interval, plan.pong_wait)
    )
    stress = await hold_phase(
        plan, pinning, log, plan.stress_seconds, (plan.stress_ping, plan.stress_ping)
    )
    outcome.details = {"connections": n, "hold": production, "heartbeat_stress": stress}
    s, r = production[SERVICE], production[REFERENCE]
    hs, hr = stress[SERVICE], stress[REFERENCE]
    held = f"{plan.hold_seconds:.0f}s, ping {plan.ping_interval:g}s"
    fast = f"{plan.stress_seconds:.0f}s, ping {plan.stress_ping:g}s"
    outcome.rows = [
        Row(
            "D",
            f"drops, {n:,} conns, {held}",
            "",
            lost(s, n),
            lost(r, n),
            target="0",
            verdict=verdict(lost(s, n) == 0),
        ),
        Row(
            "D",
            f"server CPU, {n:,} idle conns, {held}",
            "% core",
            s["cpu_pct"],
            r["cpu_pct"],
            target="< 5%",
            verdict=verdict(s["cpu_pct"] < 5.0),
        ),
        Row("D", f"RSS with {n:,} connections", "MiB", s["rss_mib"], r["rss_mib"]),
        Row(
            "D",
            f"drops, {n:,} conns, {fast}",
            "",
            lost(hs, n),
            lost(hr, n),
            target="0",
            verdict=verdict(lost(hs, n) == 0),
        ),
        Row("D", f"server CPU, {n:,} conns, {fast}", "% core", hs["cpu_pct"], hr["cpu_pct"]),
        Row(
            "D",
            "server CPU per heartbeat (ping + pong)",
            "µs",
            hs["cpu_us_per_ping"],
            hr["cpu_us_per_ping"],
        ),
    ]
    return outcome
